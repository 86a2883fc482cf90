from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from loraops.config import load_params
from loraops.errors import ConfigError
from loraops.train.job import replay_format
from loraops.train.params import TrainParams
from loraops.train.render import load_preset, parse_metrics_line, render_axolotl_config
from loraops.train.run import write_replay
from loraops.train.settings import effective_sequence_len, resolve_settings

ROOT = Path(__file__).resolve().parents[1]
# fine-tune presets; base_*.yaml pre-train the offline base model (tested in test_basemodel.py)
PRESETS = sorted(p for p in (ROOT / "axolotl_configs").glob("*.yaml") if not p.name.startswith("base_"))


def _render(params: TrainParams, preset: str = "lora_tiny_cpu.yaml", **kwargs) -> dict:
    return render_axolotl_config(
        load_preset(ROOT / "axolotl_configs" / preset),
        params,
        base_model="/models/base",
        train_file=Path("/d/train.jsonl"),
        val_file=Path("/d/val.jsonl"),
        output_dir=Path("/runs/1/out"),
        **kwargs,
    )


def _settings(params: TrainParams, preset: str):
    return resolve_settings(load_preset(ROOT / "axolotl_configs" / preset), params, preset)


def test_lora_defaults_follow_the_brief():
    settings = _settings(TrainParams(), "lora_tiny_cpu.yaml")
    assert settings["lora_r"] == 16 and settings["lora_alpha"] == 32
    assert 1 <= settings["num_epochs"] <= 3


def test_render_applies_params_paths_and_cpu_settings():
    cfg = _render(TrainParams(lora_r=8, num_epochs=2))
    assert cfg["base_model"] == "/models/base"
    assert cfg["adapter"] == "lora" and cfg["lora_r"] == 8 and cfg["lora_alpha"] == 16
    assert cfg["datasets"] == [{"path": "/d/train.jsonl", "ds_type": "json", "type": "alpaca"}]
    assert cfg["test_datasets"][0]["path"] == "/d/val.jsonl"
    assert cfg["num_epochs"] == 2 and cfg["output_dir"] == "/runs/1/out"
    for key in ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "bf16", "fp16", "tf32"):
        assert cfg[key] is False


def test_full_finetune_is_refused_with_a_reason(tmp_path: Path):
    with pytest.raises(ValidationError, match="cannot be hot-swapped as an adapter"):
        TrainParams(adapter="full")
    bare = tmp_path / "bare.yaml"  # no adapter: key would be a full fine-tune in Axolotl; loraops trains LoRA
    bare.write_text("learning_rate: 0.0001\nnum_epochs: 1\n")
    assert resolve_settings(load_preset(bare), TrainParams(), "bare.yaml").adapter == "lora"
    other = tmp_path / "other.yaml"
    other.write_text("adapter: llama-adapter\n")
    with pytest.raises(ConfigError, match="asks for adapter: llama-adapter"):
        resolve_settings(load_preset(other), TrainParams(), "other.yaml")


def test_overrides_are_applied_last():
    cfg = _render(TrainParams(overrides={"optimizer": "sgd", "lora_r": 4}))
    assert cfg["optimizer"] == "sgd" and cfg["lora_r"] == 4


def test_preset_values_win_unless_params_yaml_sets_the_key(tmp_path: Path):
    gpu = "lora_llama3_1b_gpu.yaml"
    preset = load_preset(ROOT / "axolotl_configs" / gpu)
    cfg = _render(TrainParams(device="cuda"), gpu)
    for key in (
        "learning_rate",
        "sequence_len",
        "micro_batch_size",
        "num_epochs",
        "gradient_accumulation_steps",
    ):
        assert cfg[key] == preset[key], key
    assert cfg["learning_rate"] == 0.0002  # the bug this replaces: params' default 2e-3 used to win
    # params.yaml, read from a file, sets two keys: those two win, the rest stay the preset's
    params_file = tmp_path / "params.yaml"
    params_file.write_text(
        f"train:\n  axolotl_config: axolotl_configs/{gpu}\n  device: cuda\n"
        "  learning_rate: 0.0005\n  lora_r: 32\nserving:\n  max_lora_rank: 32\n"
    )
    params = load_params(params_file).train
    settings = _settings(params, gpu)
    assert settings.sources["learning_rate"] == "params.yaml" and settings["learning_rate"] == 0.0005
    assert settings["lora_r"] == 32 and settings["lora_alpha"] == 64  # a rank set in params.yaml: 2r
    assert settings.sources["sequence_len"] == "preset" and settings["sequence_len"] == preset["sequence_len"]
    assert settings.described()["num_epochs"] == f"{preset['num_epochs']} (preset)"


def test_effective_sequence_len_reads_the_preset_only_when_params_do_not_set_it(tmp_path: Path):
    (tmp_path / "axolotl_configs").mkdir()
    (tmp_path / "axolotl_configs" / "p.yaml").write_text("adapter: lora\nsequence_len: 512\n")
    assert effective_sequence_len(tmp_path, TrainParams(axolotl_config="axolotl_configs/p.yaml")) == 512
    explicit = TrainParams(axolotl_config="axolotl_configs/missing.yaml", sequence_len=128)
    assert effective_sequence_len(tmp_path, explicit) == 128


def test_chat_data_renders_the_tokenizers_chat_template_and_replay_stays_alpaca():
    cfg = _render(TrainParams(), data_format="chat", replay_file=Path("/d/replay.jsonl"))
    train, replay = cfg["datasets"]
    assert train["type"] == "chat_template" and train["chat_template"] == "tokenizer_default"
    assert train["field_messages"] == "messages" and train["roles_to_train"] == ["assistant"]
    assert replay == {"path": "/d/replay.jsonl", "ds_type": "json", "type": "alpaca"}
    assert cfg["test_datasets"][0]["type"] == "chat_template"


def test_a_real_models_own_answers_are_replayed_in_its_chat_template(tmp_path: Path):
    chats = [{"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}]
    replay = write_replay(chats, tmp_path / "replay.jsonl")
    assert replay_format(replay) == "chat"
    assert (
        replay_format(write_replay([{"instruction": "i", "output": "o"}], tmp_path / "a.jsonl")) == "alpaca"
    )
    cfg = _render(TrainParams(), data_format="chat", replay_file=replay, replay_format=replay_format(replay))
    assert cfg["datasets"][1]["type"] == "chat_template" and cfg["datasets"][1]["path"] == str(replay)


def test_runs_checkpoint_resume_save_safetensors_only_and_seed_the_adapter():
    cfg = _render(TrainParams())
    assert cfg["auto_resume_from_checkpoints"] is True and cfg["save_safetensors"] is True
    assert cfg["save_strategy"] != "no"
    assert cfg["plugins"] == ["loraops.train.axolotl_plugin.SeededStart"]
    preset = {**load_preset(ROOT / "axolotl_configs" / "lora_tiny_cpu.yaml"), "plugins": ["my.Plugin"]}
    own = render_axolotl_config(
        preset, TrainParams(), base_model="m", train_file=Path("t"), val_file=None, output_dir=Path("o")
    )
    assert own["plugins"] == ["my.Plugin", "loraops.train.axolotl_plugin.SeededStart"]  # the preset's kept


def test_legacy_launcher_values_mean_a_local_run_with_that_axolotl_launcher():
    params = TrainParams.model_validate({"launcher": "accelerate"})
    assert params.launcher == "local" and params.axolotl_launcher == "accelerate"
    with pytest.raises(ValidationError, match=r"needs a train\.sagemaker section"):
        TrainParams(launcher="sagemaker")


def test_qlora_on_cpu_is_refused_with_a_reason():
    with pytest.raises(ValidationError, match="needs a CUDA GPU"):
        TrainParams(adapter="qlora", device="cpu")
    with pytest.raises(ConfigError, match=r"needs a CUDA GPU, but train\.device is cpu"):
        _settings(TrainParams(), "qlora_llama3_8b_gpu.yaml")  # the preset's adapter: qlora stands
    cfg = _render(TrainParams(adapter="qlora", device="cuda"), "qlora_llama3_8b_gpu.yaml")
    assert cfg["load_in_4bit"] is True and cfg["adapter"] == "qlora"
    assert cfg.get("bf16") == "auto"  # no CPU settings forced on a GPU run


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_shipped_preset_loads_and_renders(preset: Path):
    raw = yaml.safe_load(preset.read_text())
    assert isinstance(raw, dict) and raw.get("adapter") in {"lora", "qlora"}
    device = "cuda" if "gpu" in preset.name else "cpu"
    cfg = _render(TrainParams(device=device), preset.name)
    assert cfg["adapter"] == raw["adapter"] and cfg["lora_alpha"] == 2 * cfg["lora_r"]
    assert not cfg.get("flash_attention"), "flash-attn is not in the CUDA trainer environment"


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
