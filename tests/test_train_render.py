from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from loraops.errors import ConfigError
from loraops.train.params import TrainParams
from loraops.train.render import load_preset, parse_metrics_line, render_axolotl_config

ROOT = Path(__file__).resolve().parents[1]
# fine-tune presets; base_*.yaml pre-train the offline base model (tested in test_basemodel.py)
PRESETS = sorted(p for p in (ROOT / "axolotl_configs").glob("*.yaml") if not p.name.startswith("base_"))


def _render(params: TrainParams, preset: str = "lora_tiny_cpu.yaml") -> dict:
    return render_axolotl_config(
        load_preset(ROOT / "axolotl_configs" / preset),
        params,
        base_model="/models/base",
        train_file=Path("/d/train.jsonl"),
        val_file=Path("/d/val.jsonl"),
        output_dir=Path("/runs/1/out"),
    )


def test_lora_defaults_follow_the_brief():
    params = TrainParams()
    assert params.lora_r == 16 and params.lora_alpha == 32
    assert 1 <= params.num_epochs <= 3


def test_render_applies_params_paths_and_cpu_settings():
    cfg = _render(TrainParams(lora_r=8, num_epochs=2))
    assert cfg["base_model"] == "/models/base"
    assert cfg["adapter"] == "lora" and cfg["lora_r"] == 8 and cfg["lora_alpha"] == 16
    assert cfg["datasets"] == [{"path": "/d/train.jsonl", "ds_type": "json", "type": "alpaca"}]
    assert cfg["test_datasets"][0]["path"] == "/d/val.jsonl"
    assert cfg["num_epochs"] == 2 and cfg["output_dir"] == "/runs/1/out"
    for key in ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "bf16", "fp16", "tf32"):
        assert cfg[key] is False


def test_full_finetune_drops_adapter_keys_and_overrides_win():
    cfg = _render(TrainParams(adapter="full", overrides={"optimizer": "sgd"}))
    assert "adapter" not in cfg and not any(k.startswith("lora_r") for k in cfg)
    assert cfg["optimizer"] == "sgd"


def test_qlora_on_cpu_is_refused_with_a_reason():
    with pytest.raises(ValidationError, match="needs a CUDA GPU"):
        TrainParams(adapter="qlora", device="cpu")
    cfg = _render(TrainParams(adapter="qlora", device="cuda"), "qlora_llama3_8b_gpu.yaml")
    assert cfg["load_in_4bit"] is True and cfg["adapter"] == "qlora"
    assert cfg.get("bf16") == "auto"  # no CPU settings forced on a GPU run


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_shipped_preset_loads_and_renders(preset: Path):
    raw = yaml.safe_load(preset.read_text())
    assert isinstance(raw, dict) and raw.get("adapter") in {"lora", "qlora"}
    device = "cuda" if "gpu" in preset.name else "cpu"
    adapter = raw["adapter"]
    cfg = _render(TrainParams(device=device, adapter=adapter), preset.name)
    assert cfg["lora_alpha"] == 2 * cfg["lora_r"]


def test_missing_or_broken_preset_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_preset(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("adapter: lora\nlora_r: [16\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+"):
        load_preset(bad)


def test_parse_metrics_line():
    line = "  1%|1 | {'loss': 2.5, 'grad_norm': 1.0, 'learning_rate': 0.001, 'epoch': 0.25}"
    assert parse_metrics_line(line) == {"loss": 2.5, "grad_norm": 1.0, "learning_rate": 0.001, "epoch": 0.25}
    assert parse_metrics_line("{'eval_loss': 1.5, 'epoch': 1.0}") == {"eval_loss": 1.5, "epoch": 1.0}
    assert parse_metrics_line("loading model") is None
