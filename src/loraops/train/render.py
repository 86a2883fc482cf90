"""Render the Axolotl config of a run: a shipped preset + params.yaml `train:` + the run's paths (pure)."""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path
from typing import Any

import yaml

from loraops.data.records import Format
from loraops.errors import ConfigError
from loraops.train.params import TrainParams
from loraops.train.settings import Settings, resolve_settings

# Axolotl's Triton LoRA kernels and mixed precision crash or are unavailable on CPU.
CPU_SETTINGS: dict[str, Any] = {
    "lora_mlp_kernel": False,
    "lora_qkv_kernel": False,
    "lora_o_kernel": False,
    "bf16": False,
    "fp16": False,
    "tf32": False,
}


# Seeds the adapter's initial weights (Axolotl 0.19 seeds only later): see train/axolotl_plugin.py.
SEED_PLUGIN = "loraops.train.axolotl_plugin.SeededStart"

# Chat data: Axolotl's chat_template strategy with the tokenizer's own template (the one vLLM applies to
# chat.completions requests), loss on the assistant turns and their end-of-turn token only.
CHAT_DATASET: dict[str, Any] = {
    "type": "chat_template",
    "chat_template": "tokenizer_default",
    "field_messages": "messages",
    "message_property_mappings": {"role": "role", "content": "content"},
    "roles_to_train": ["assistant"],
    "train_on_eos": "turn",
}


def load_preset(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(
            f"Axolotl preset {path} not found", hint="set train.axolotl_config to a file in axolotl_configs/"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: not valid YAML", hint="fix the preset's syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: an Axolotl config must be a mapping")
    return data


def dataset_entry(path: Path, data_format: Format, *, split: str | None = None) -> dict[str, Any]:
    """One Axolotl dataset of prepared data: alpaca, or chat rendered with the tokenizer's own template."""
    entry: dict[str, Any] = {"path": str(path), "ds_type": "json"}
    if data_format == "chat":
        entry.update(CHAT_DATASET)
    else:
        entry["type"] = "alpaca"
    if split is not None:
        entry["split"] = split
    return entry


def render_axolotl_config(
    preset: dict[str, Any],
    params: TrainParams,
    *,
    base_model: str,
    train_file: Path,
    val_file: Path | None,
    output_dir: Path,
    data_format: Format = "alpaca",
    replay_file: Path | None = None,
    replay_format: Format = "alpaca",
    settings: Settings | None = None,
    prepared_path: Path | None = None,
) -> dict[str, Any]:
    """The Axolotl config of one run: the preset, the effective knobs (``resolve_settings``), the data
    and paths of this run, checkpointing for resume, CPU settings on CPU, and ``overrides`` last."""
    settings = settings or resolve_settings(preset, params)
    cfg = copy.deepcopy(preset)
    cfg["base_model"] = base_model
    cfg["datasets"] = [dataset_entry(train_file, data_format)]
    if replay_file is not None:
        cfg["datasets"].append(dataset_entry(replay_file, replay_format))
    if val_file is not None:
        cfg["test_datasets"] = [dataset_entry(val_file, data_format, split="train")]
        cfg["val_set_size"] = 0.0
    cfg["output_dir"] = str(output_dir)
    cfg["dataset_prepared_path"] = str(prepared_path or output_dir.parent / "prepared-dataset")
    cfg.update(settings.values)
    if "lora_target_modules" not in settings.values:
        cfg.pop("lora_target_modules", None)
    if settings.adapter == "qlora":
        cfg["load_in_4bit"] = True
        cfg.pop("load_in_8bit", None)
    # A rerun of an interrupted run continues from its last checkpoint in output_dir; adapters and
    # checkpoints are written as safetensors (a pickle can run code when loaded).
    cfg["auto_resume_from_checkpoints"] = True
    cfg["save_safetensors"] = True
    cfg["plugins"] = [*[p for p in cfg.get("plugins") or [] if p != SEED_PLUGIN], SEED_PLUGIN]
    if params.device == "cpu":
        cfg.update(CPU_SETTINGS)
    cfg.update(copy.deepcopy(params.overrides))
    return cfg


def write_config(cfg: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


_METRICS_LINE = re.compile(r"(\{'(?:loss|eval_loss|train_loss|train_runtime)'.*\})")


def parse_metrics_line(line: str) -> dict[str, float] | None:
    """Axolotl (HF Trainer) prints logs as Python dict reprs: {'loss': 2.1, 'epoch': 0.5, ...}."""
    match = _METRICS_LINE.search(line)
    if not match:
        return None
    try:
        value = ast.literal_eval(match.group(1))
    except (ValueError, SyntaxError):
        return None
    if not isinstance(value, dict):
        return None
    out: dict[str, float] = {}
    for key, val in value.items():
        try:
            out[str(key)] = float(val)
        except (TypeError, ValueError):
            continue
    return out
