"""Which value of each training knob a run really uses: params.yaml, else the preset, else the default.

A preset (``axolotl_configs/*.yaml``) is a complete Axolotl recipe for one kind of run; params.yaml's
`train:` section is where an engineer changes one thing about it. So a value written in params.yaml
wins, a value the preset sets stands otherwise, and TrainParams' defaults only fill what neither says.
Pure: the preset is a dict read by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from loraops.errors import ConfigError
from loraops.train.params import TrainParams

# TrainParams field -> Axolotl key (same names: the params mirror Axolotl's own vocabulary).
KNOBS = (
    "adapter",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "num_epochs",
    "learning_rate",
    "micro_batch_size",
    "gradient_accumulation_steps",
    "sequence_len",
    "seed",
)

Source = Literal["params.yaml", "preset", "default"]


@dataclass(frozen=True)
class Settings:
    """The knob values of one run and where each came from (shown in the run's params)."""

    values: dict[str, Any]
    sources: dict[str, Source]
    preset_name: str

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def adapter(self) -> str:
        return str(self.values["adapter"])

    @property
    def sequence_len(self) -> int:
        return int(self.values["sequence_len"])

    @property
    def lora_r(self) -> int:
        return int(self.values["lora_r"])

    def described(self) -> dict[str, str]:
        """``{"lora_r": "16 (preset)", ...}``: what a reader of the run needs to trust its numbers."""
        return {k: f"{self.values[k]} ({self.sources[k]})" for k in KNOBS if k in self.values}


def _targets_from_preset(preset: dict[str, Any]) -> bool:
    return bool(preset.get("lora_target_modules")) or bool(preset.get("lora_target_linear"))


def resolve_settings(preset: dict[str, Any], params: TrainParams, preset_name: str = "preset") -> Settings:
    """The effective knobs: set in params.yaml > set in the preset > TrainParams default.

    lora_alpha follows the rank unless set: alpha in params.yaml wins; a rank set in params.yaml gets
    2 * rank (the preset's alpha belonged to the preset's rank); otherwise the preset's alpha, else 2 * r.
    """
    explicit = params.explicit()
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for key in KNOBS:
        if key == "lora_alpha":
            continue
        if key == "lora_target_modules" and key not in explicit and _targets_from_preset(preset):
            if preset.get("lora_target_modules"):
                values[key], sources[key] = list(preset["lora_target_modules"]), "preset"
            continue  # lora_target_linear: Axolotl picks every linear layer itself
        if key in explicit:
            values[key], sources[key] = getattr(params, key), "params.yaml"
        elif preset.get(key) is not None:
            values[key], sources[key] = preset[key], "preset"
        else:
            values[key], sources[key] = getattr(params, key), "default"
    rank = int(values["lora_r"])
    if "lora_alpha" in explicit and params.lora_alpha is not None:
        values["lora_alpha"], sources["lora_alpha"] = params.lora_alpha, "params.yaml"
    elif "lora_r" not in explicit and preset.get("lora_alpha") is not None:
        values["lora_alpha"], sources["lora_alpha"] = preset["lora_alpha"], "preset"
    else:
        values["lora_alpha"], sources["lora_alpha"] = 2 * rank, "default"
    settings = Settings(values, sources, preset_name)
    _check(settings, preset, params)
    return settings


def _check(settings: Settings, preset: dict[str, Any], params: TrainParams) -> None:
    where = settings.preset_name
    if settings.adapter not in ("lora", "qlora"):
        raise ConfigError(
            f"{where} asks for adapter: {settings.adapter}; loraops trains LoRA/QLoRA adapters only "
            "(what vLLM hot-swaps on the served base model)",
            hint="set adapter: lora (or qlora on a CUDA GPU) in the preset or in params.yaml train:",
        )
    cuda_only = []
    if settings.adapter == "qlora" or preset.get("load_in_4bit") or preset.get("load_in_8bit"):
        cuda_only.append("4/8-bit loading (bitsandbytes)")
    if params.device == "cpu" and cuda_only:
        raise ConfigError(
            f"{where} uses {', '.join(cuda_only)}, which needs a CUDA GPU, but train.device is cpu",
            hint="set train.device: cuda on a GPU host (or launcher: sagemaker), or use a CPU LoRA preset",
        )


def preset_path(workspace_root: Path, params: TrainParams) -> Path:
    return workspace_root / params.axolotl_config


def effective_settings(workspace_root: Path, params: TrainParams) -> Settings:
    """``resolve_settings`` on the preset file that params.yaml names (read here)."""
    from loraops.train.render import load_preset

    path = preset_path(workspace_root, params)
    return resolve_settings(load_preset(path), params, params.axolotl_config)


def effective_sequence_len(workspace_root: Path, params: TrainParams) -> int:
    """The run's sequence_len, which the data stage checks lengths against (no preset read when
    params.yaml sets it, since it wins then)."""
    if "sequence_len" in params.explicit():
        return params.sequence_len
    return effective_settings(workspace_root, params).sequence_len
