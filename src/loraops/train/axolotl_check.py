"""Axolotl's own config validation of rendered configs, without training (runs in the trainer env).

    python -m loraops.train.axolotl_check [--gpu SM] CONFIG.yaml ... [--gpu-config CONFIG.yaml ...]

prints one JSON object: {config path: "ok" | the validation error}. A ``--gpu-config`` is validated as
on a GPU of compute capability ``--gpu`` (default sm_90: bf16 and tf32 available), so CUDA presets are
checked on a CPU host; checks Axolotl makes only when CUDA is present (flash-attn availability) are
then skipped, and loraops' preflight makes that one itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def validate(path: Path, gpu: str | None) -> str:
    import yaml
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault(yaml.safe_load(path.read_text(encoding="utf-8")))
    capabilities: dict[str, Any] | None = None
    env_capabilities: dict[str, Any] | None = None
    if gpu:
        import torch

        capabilities = {"bf16": True, "fp8": False, "tf32": True, "n_gpu": 1, "compute_capability": gpu}
        env_capabilities = {"torch_version": str(torch.__version__).split("+", maxsplit=1)[0]}
    try:
        validate_config(cfg, capabilities=capabilities, env_capabilities=env_capabilities)
    except Exception as exc:
        errors = getattr(exc, "errors", None)
        if callable(errors):  # pydantic: each error's location and message
            text = "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', ())) or 'config'}: {e.get('msg', '')}"
                for e in errors()
            )
        else:
            text = f"{type(exc).__name__}: {exc}"
        return " ".join(text.split())[:800]
    return "ok"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gpu", default="sm_90", help="compute capability of --gpu-config checks")
    parser.add_argument("--gpu-config", action="append", default=[], type=Path, help="a CUDA config")
    parser.add_argument("configs", nargs="*", type=Path, help="configs checked as on this host")
    args = parser.parse_args(argv)
    results = {str(p): validate(p, None) for p in args.configs}
    results.update({str(p): validate(p, args.gpu) for p in args.gpu_config})
    print(json.dumps(results))
    return 0 if all(v == "ok" for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
