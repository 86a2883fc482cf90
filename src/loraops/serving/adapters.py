"""Checks on a PEFT LoRA adapter directory before a server is asked to load it.

vLLM accepts some broken adapters without a word: one whose module names do not match the base model
loads "successfully" and then changes nothing (vllm#34186). These checks read only the adapter's
config and the safetensors header (no torch), so they run in the control plane in milliseconds.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraops.errors import StageError
from loraops.serving.params import ALLOWED_MAX_LORA_RANKS

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLED_WEIGHTS = ("adapter_model.bin", "adapter_model.pt")
_LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?:A|B|embedding_A|embedding_B)(?:\.weight)?$"
)
_MAX_HEADER_BYTES = 100 << 20


@dataclass(frozen=True)
class AdapterInfo:
    path: Path
    rank: int  # the largest rank in the adapter (r, or a rank_pattern entry)
    target_modules: tuple[str, ...] | str  # a str is a PEFT regex (or "all-linear")
    lora_modules: tuple[str, ...]  # modules with LoRA weights, e.g. model.layers.0.self_attn.q_proj


def safetensors_keys(path: Path) -> list[str]:
    """Tensor names in a .safetensors file, read from its JSON header."""
    return list(safetensors_shapes(path))


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape of a .safetensors file, read from its JSON header (no weights loaded)."""
    try:
        with path.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > _MAX_HEADER_BYTES:
                raise ValueError(f"header of {size} bytes")
            header = json.loads(fh.read(size))
    except (OSError, struct.error, ValueError) as exc:
        raise StageError(
            f"{path} is not a readable safetensors file ({exc})", hint="export the adapter again"
        ) from None
    if not isinstance(header, dict):
        raise StageError(f"{path} is not a readable safetensors file", hint="export the adapter again")
    return {
        k: list(v.get("shape", [])) if isinstance(v, dict) else []
        for k, v in header.items()
        if k != "__metadata__"
    }


def base_weight_names(model_dir: Path) -> set[str] | None:
    """Weight names of a local Hugging Face model directory; None when it is not one (e.g. a hub id)."""
    if not model_dir.is_dir():
        return None
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text()).get("weight_map", {})
        except ValueError:
            return None
        return set(weight_map) if isinstance(weight_map, dict) else None
    single = model_dir / "model.safetensors"
    if single.is_file():
        return set(safetensors_keys(single))
    return None


def next_allowed_rank(rank: int) -> int | None:
    return next((r for r in ALLOWED_MAX_LORA_RANKS if r >= rank), None)


def rank_hint(rank: int, max_lora_rank: int) -> str:
    allowed = next_allowed_rank(rank)
    raise_it = f"set serving.max_lora_rank: {allowed} and restart the server, or " if allowed else ""
    return f"{raise_it}train with train.lora_r <= {max_lora_rank}"


def _targets(config: dict[str, Any], where: Path) -> tuple[str, ...] | str:
    raw = config.get("target_modules")
    if isinstance(raw, str) and raw.strip():
        return raw
    if isinstance(raw, list) and raw and all(isinstance(t, str) and t for t in raw):
        return tuple(sorted(raw))
    raise StageError(
        f"{where}: target_modules is empty, so the adapter changes nothing",
        hint="train with train.lora_target_modules set (e.g. [q_proj, v_proj])",
    )


def _rank(config: dict[str, Any], where: Path) -> int:
    ranks = [config.get("r")]
    pattern = config.get("rank_pattern") or {}
    if isinstance(pattern, dict):
        ranks.extend(pattern.values())
    if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in ranks):
        raise StageError(f"{where}: 'r' must be a positive integer", hint="export the adapter again")
    return max(r for r in ranks if isinstance(r, int))


def _matches(target: str, module: str) -> bool:
    return module == target or module.endswith("." + target)


def model_key(model: str) -> str:
    """A model's name without where it lives: the last path component, or for a Hugging Face cache
    snapshot (``.../models--org--name/snapshots/<sha>``) the model's name; case-insensitive."""
    parts = [p for p in model.rstrip("/").split("/") if p]
    if "snapshots" in parts and parts.index("snapshots") > 0:
        parts = [parts[parts.index("snapshots") - 1].split("--")[-1]]
    return parts[-1].lower() if parts else ""


def check_adapter_dir(
    path: Path | str,
    *,
    max_lora_rank: int | None = None,
    base_weights: set[str] | None = None,
    base_model: str | None = None,
) -> AdapterInfo:
    """Refuse an adapter directory that vLLM would refuse, or would accept and then not apply.

    ``base_weights`` (from :func:`base_weight_names`) also checks that every LoRA module exists in the
    base model under the same name. ``base_model`` (the served base's id or path) refuses an adapter
    whose ``base_model_name_or_path`` names another model: same shapes, so vLLM would load it and serve
    nonsense.
    """
    where = Path(path).expanduser().resolve()
    if not where.is_dir():
        raise StageError(f"adapter directory {where} does not exist", hint="check the path (or download it)")
    config_file, weights_file = where / CONFIG_FILE, where / WEIGHTS_FILE
    pickled = [name for name in PICKLED_WEIGHTS if (where / name).exists()]
    if pickled:
        raise StageError(
            f"{where} holds {', '.join(pickled)}: pickled weights, which can run code when loaded; "
            "loraops serves adapters saved as safetensors only",
            hint="save the adapter with peft's save_pretrained(safe_serialization=True)",
        )
    for needed in (config_file, weights_file):
        if not needed.is_file():
            other = sorted(p.name for p in where.iterdir())[:6]
            raise StageError(
                f"{where} has no {needed.name}, so it is not a PEFT LoRA adapter (found: {', '.join(other)})",
                hint="save the adapter with peft's save_pretrained (safetensors)",
            )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StageError(
            f"{config_file} is not valid JSON ({exc})", hint="export the adapter again"
        ) from None
    if not isinstance(config, dict):
        raise StageError(f"{config_file} is not a JSON object", hint="export the adapter again")
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise StageError(f"{config_file}: peft_type is {peft_type!r}; the server only serves LORA adapters")

    trained_on = config.get("base_model_name_or_path")
    if (
        base_model
        and isinstance(trained_on, str)
        and trained_on
        and model_key(trained_on) != model_key(base_model)
    ):
        raise StageError(
            f"{where} was trained on {trained_on}, but the server runs {base_model}",
            hint="train it on the served base model (or serve the base model it was trained on)",
        )
    rank = _rank(config, config_file)
    if max_lora_rank is not None and rank > max_lora_rank:
        raise StageError(
            f"adapter rank {rank} is above serving.max_lora_rank {max_lora_rank} ({where})",
            hint=rank_hint(rank, max_lora_rank),
        )
    targets = _targets(config, config_file)

    modules = sorted({m.group("module") for k in safetensors_keys(weights_file) if (m := _LORA_KEY.match(k))})
    if not modules:
        raise StageError(f"{weights_file} holds no LoRA weights (no lora_A/lora_B tensors)")
    if isinstance(targets, tuple):
        missing = [t for t in targets if not any(_matches(t, m) for m in modules)]
        if missing:
            raise StageError(
                f"{where}: target_modules {', '.join(missing)} have no weights in {WEIGHTS_FILE}; "
                "the server would load it and apply nothing (vllm#34186)",
                hint="export the adapter again from the training run",
            )
    if base_weights is not None:
        unknown = [m for m in modules if f"{m}.weight" not in base_weights]
        if unknown:
            example = next((w for w in sorted(base_weights) if w.endswith(".weight")), "?")
            raise StageError(
                f"{where}: {len(unknown)} of {len(modules)} LoRA modules (e.g. {unknown[0]}) are not in the "
                f"base model (which has e.g. {example}); the server would apply nothing (vllm#34186)",
                hint="train the adapter on the base model that is served",
            )
    return AdapterInfo(where, rank, targets, tuple(modules))
