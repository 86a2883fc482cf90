"""Render the Axolotl config of a run: a shipped preset + params.yaml `train:` + the run's paths (pure)."""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path
from typing import Any

import yaml

from loraops.errors import ConfigError
from loraops.train.params import TrainParams

# Axolotl's Triton LoRA kernels and mixed precision crash or are unavailable on CPU.
CPU_SETTINGS: dict[str, Any] = {
    "lora_mlp_kernel": False,
    "lora_qkv_kernel": False,
    "lora_o_kernel": False,
    "bf16": False,
    "fp16": False,
    "tf32": False,
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


def render_axolotl_config(
    preset: dict[str, Any],
    params: TrainParams,
    *,
    base_model: str,
    train_file: Path,
    val_file: Path | None,
    output_dir: Path,
    dataset_type: str = "alpaca",
    replay_file: Path | None = None,
) -> dict[str, Any]:
    cfg = copy.deepcopy(preset)
    cfg["base_model"] = base_model
    cfg["datasets"] = [{"path": str(train_file), "ds_type": "json", "type": dataset_type}]
    if replay_file is not None:
        cfg["datasets"].append({"path": str(replay_file), "ds_type": "json", "type": "alpaca"})
    if val_file is not None:
        cfg["test_datasets"] = [
            {"path": str(val_file), "ds_type": "json", "type": dataset_type, "split": "train"}
        ]
        cfg["val_set_size"] = 0.0
    cfg["output_dir"] = str(output_dir)
    cfg["dataset_prepared_path"] = str(output_dir.parent / "prepared-dataset")
    cfg.update(
        {
            "sequence_len": params.sequence_len,
            "micro_batch_size": params.micro_batch_size,
            "gradient_accumulation_steps": params.gradient_accumulation_steps,
            "num_epochs": params.num_epochs,
            "learning_rate": params.learning_rate,
            "seed": params.seed,
        }
    )
    if params.adapter == "full":
        for key in [
            k for k in cfg if k.startswith("lora_") or k in ("adapter", "load_in_4bit", "load_in_8bit")
        ]:
            del cfg[key]
    else:
        cfg.update(
            {
                "adapter": params.adapter,
                "lora_r": params.lora_r,
                "lora_alpha": params.lora_alpha,
                "lora_dropout": params.lora_dropout,
                "lora_target_modules": list(params.lora_target_modules),
            }
        )
        if params.adapter == "qlora":
            cfg["load_in_4bit"] = True
            cfg.pop("load_in_8bit", None)
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
