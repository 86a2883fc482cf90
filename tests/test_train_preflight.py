"""Preflight: each problem that would stop a job after minutes (or hours on a GPU) stops it at once."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from loraops.errors import ConfigError
from loraops.train.params import TrainParams
from loraops.train.preflight import Probe, cached_snapshot, check_targets, preflight, weight_shapes
from loraops.train.render import load_preset, render_axolotl_config
from loraops.train.settings import resolve_settings

ROOT = Path(__file__).resolve().parents[1]
LLAMA_WEIGHTS = {
    "model.embed_tokens.weight": [320, 64],
    "model.layers.0.self_attn.q_proj.weight": [64, 64],
    "model.layers.0.self_attn.k_proj.weight": [64, 64],
    "model.layers.0.self_attn.v_proj.weight": [64, 64],
    "model.layers.0.self_attn.o_proj.weight": [64, 64],
    "model.layers.0.mlp.gate_proj.weight": [128, 64],
    "model.layers.0.mlp.up_proj.weight": [128, 64],
    "model.layers.0.mlp.down_proj.weight": [64, 128],
    "model.layers.0.input_layernorm.weight": [64],
    "model.norm.weight": [64],
    "lm_head.weight": [320, 64],
}


def write_model(directory: Path, *, tokenizer: bool = True) -> Path:
    """A model directory whose safetensors file holds only a header (shapes are all preflight reads)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))
    if tokenizer:
        (directory / "tokenizer.json").write_text("{}")
    header = json.dumps(
        {k: {"dtype": "F32", "shape": v, "data_offsets": [0, 0]} for k, v in LLAMA_WEIGHTS.items()}
    )
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode())
    return directory


def run_preflight(params: TrainParams, base_model: str, probe: Probe | None = None, **kwargs) -> list[str]:
    preset = load_preset(ROOT / params.axolotl_config)
    settings = resolve_settings(preset, params, params.axolotl_config)
    rendered = render_axolotl_config(
        preset, params, base_model=base_model, train_file=Path("t"), val_file=None, output_dir=Path("o")
    )
    found = probe or Probe(cuda=True, devices=1, flash_attn=False, bitsandbytes=True, torch="2.13.0")

    def ask() -> Probe:
        return found

    return preflight(
        params, settings, rendered, base_model=base_model, probe=ask, **{"max_lora_rank": 16, **kwargs}
    )


def test_a_local_model_with_tokenizer_and_linear_targets_passes(tmp_path: Path) -> None:
    model = write_model(tmp_path / "model")
    done = run_preflight(TrainParams(), str(model))
    assert any("base model and tokenizer found" in line for line in done)
    assert weight_shapes(model)["model.norm.weight"] == [64]


def test_a_hub_id_must_be_in_the_cache_when_training_offline_here(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    with pytest.raises(
        ConfigError, match=r"'meta-llama/Llama-3.2-1B' is not in the Hugging Face cache"
    ) as err:
        run_preflight(TrainParams(), "meta-llama/Llama-3.2-1B", cache=cache)
    assert "hf download meta-llama/Llama-3.2-1B" in str(err.value) and "\n" not in str(err.value)
    snapshot = write_model(cache / "models--meta-llama--Llama-3.2-1B" / "snapshots" / "abc123")
    assert cached_snapshot("meta-llama/Llama-3.2-1B", cache) == snapshot
    assert run_preflight(TrainParams(), "meta-llama/Llama-3.2-1B", cache=cache)


def test_a_model_without_tokenizer_or_a_missing_directory_is_refused(tmp_path: Path) -> None:
    bare = write_model(tmp_path / "bare", tokenizer=False)
    with pytest.raises(ConfigError, match="no tokenizer in"):
        run_preflight(TrainParams(), str(bare))
    with pytest.raises(ConfigError, match="does not exist"):
        run_preflight(TrainParams(), str(tmp_path / "nowhere"))


def test_lora_targets_must_be_linear_layers_of_the_base_model() -> None:
    check_targets(["q_proj", "down_proj", "lm_head"], LLAMA_WEIGHTS, "m")
    with pytest.raises(ConfigError, match="'c_attn' is not in base model m"):
        check_targets(["q_proj", "c_attn"], LLAMA_WEIGHTS, "m")
    with pytest.raises(ConfigError, match="not a linear layer, and vLLM serves LoRA on linear layers"):
        check_targets(["input_layernorm"], LLAMA_WEIGHTS, "m")


def test_cuda_settings_need_a_cuda_device(tmp_path: Path) -> None:
    model = str(write_model(tmp_path / "model"))
    qlora = TrainParams(axolotl_config="axolotl_configs/qlora_llama3_8b_gpu.yaml", device="cuda")
    no_gpu = Probe(cuda=False, devices=0, flash_attn=False, bitsandbytes=True, torch="2.13.0+cpu")
    with pytest.raises(ConfigError, match=r"sees no CUDA GPU .*QLoRA \(4-bit\) and bf16 need one"):
        run_preflight(qlora, model, no_gpu)
    assert run_preflight(qlora, model)  # with a GPU it passes
    flash = TrainParams(device="cuda", overrides={"flash_attention": True})
    with pytest.raises(ConfigError, match="no flash-attn package"):
        run_preflight(flash, model)
    asked: list[bool] = []
    cpu = TrainParams()
    preset = load_preset(ROOT / cpu.axolotl_config)
    preflight(
        cpu,
        resolve_settings(preset, cpu),
        {},
        base_model=model,
        max_lora_rank=16,
        probe=lambda: asked.append(True) or no_gpu,  # type: ignore[func-returns-value]
    )
    assert not asked  # a CPU run does not pay for the probe


def test_sagemaker_gpu_settings_need_a_gpu_instance(tmp_path: Path) -> None:
    sagemaker = {
        "role_arn": "arn:aws:iam::123456789012:role/r",
        "image_uri": "i",
        "s3_prefix": "s3://bucket/p",
        "instance_type": "ml.m5.xlarge",
    }
    params = TrainParams.model_validate({"launcher": "sagemaker", "device": "cuda", "sagemaker": sagemaker})
    with pytest.raises(ConfigError, match=r"ml\.m5\.xlarge has no GPU"):
        run_preflight(params, "meta-llama/Llama-3.2-1B", cache=tmp_path)  # a hub id: the job downloads it
    gpu = TrainParams.model_validate(
        {
            "launcher": "sagemaker",
            "device": "cuda",
            "sagemaker": {**sagemaker, "instance_type": "ml.g5.2xlarge"},
        }
    )
    assert run_preflight(gpu, "meta-llama/Llama-3.2-1B", cache=tmp_path)


def test_the_effective_rank_must_fit_the_server(tmp_path: Path) -> None:
    model = str(write_model(tmp_path / "model"))
    with pytest.raises(ConfigError, match=r"LoRA rank 16 \(preset\) is above serving.max_lora_rank 8"):
        run_preflight(TrainParams(), model, max_lora_rank=8)
