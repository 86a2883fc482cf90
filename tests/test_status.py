"""`loraops status`: the report from its facts (pure), and the command against a real MLflow server with
the other services down (each unknown fact says why; status itself does not fail)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from conftest import make_workspace
from fixtures_mlflow import MlflowServer
from loraops.cli import main
from loraops.registry.params import RegistryParams
from loraops.registry.tracking import Registry
from loraops.services import free_port
from loraops.status import DeploymentRow, ModelStatus, ReplicaRow, RunRow, Sourced, VersionRow

pytest_plugins = ["fixtures_mlflow"]

HASH_A, HASH_B = "a" * 32, "b" * 32


def _status(prepared: str, versions: list[VersionRow], **kw: object) -> ModelStatus:
    defaults: dict[str, object] = {
        "replicas": Sourced([ReplicaRow("http://r0", {"triage": "2", "triage-v2": "2"}, True)]),
        "last_run": Sourced(
            RunRow("brave-fox", "Completed", "http://prefect/runs/flow-run/1", "2026-11-27T03:00")
        ),
        "next_run": Sourced("2026-11-28T03:00+00:00 (calm-owl)"),
    }
    defaults.update(kw)
    return ModelStatus(
        model="triage",
        champion_alias="champion",
        versions=Sourced(versions),
        prepared_data=prepared,
        urls={"MLflow UI": "http://mlflow/#/models/triage"},
        **defaults,  # type: ignore[arg-type]
    )


ROWS = [
    VersionRow("3", "failed", 0.41, (), HASH_B),
    VersionRow("2", "passed", 0.87, ("champion",), HASH_A),
    VersionRow("1", "passed", 0.80, (), HASH_A),
]


def test_the_report_shows_versions_serving_data_and_runs():
    lines = _status(HASH_A, ROWS).lines()
    assert lines[0] == "== triage"
    assert "   v3       failed           0.410  -" in lines
    assert "   v2       passed           0.870  champion" in lines
    assert "== data: the champion (v2) was trained on the prepared data (aaaaaaaaaaaa)" in lines
    assert "   http://r0: triage -> v2, triage-v2 -> v2 [in sync]" in lines
    assert "== last retrain: brave-fox Completed (2026-11-27T03:00) http://prefect/runs/flow-run/1" in lines
    assert "== next scheduled run: 2026-11-28T03:00+00:00 (calm-owl)" in lines


def test_new_data_and_unknown_sources_are_said_plainly():
    lines = _status(
        HASH_B,
        ROWS,
        replicas=Sourced(error="the sync hook at http://h did not answer"),
        last_run=Sourced(error="the Prefect API at http://p does not answer"),
        next_run=Sourced(None),
    ).lines()
    assert any(
        "trained on aaaaaaaaaaaa, the prepared data is bbbbbbbbbbbb: a retrain would train" in ln
        for ln in lines
    )
    assert "   unknown (the sync hook at http://h did not answer)" in lines
    assert "== last retrain: unknown (the Prefect API at http://p does not answer)" in lines
    assert "== next scheduled run: none scheduled (`loraops schedule`)" in lines


@pytest.mark.e2e
def test_the_command_reads_the_registry_and_says_what_is_down(
    mlflow_server: MlflowServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    name = f"status-{uuid.uuid4().hex[:8]}"
    registry = Registry(mlflow_server.url, RegistryParams(model_name=name, experiment=f"exp-{name}"))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    for gate, score in (("passed", 0.9), ("failed", 0.3)):
        with registry.run("train") as run:
            run.log_artifacts(adapter, "adapter")
            run.log_metrics({"candidate.score": score})
        version = registry.register_adapter(run.run_id, tags={"gate": gate, "data.dvc_hash": HASH_A})
        if gate == "passed":
            registry.set_champion(version.version)
    dead = f"http://127.0.0.1:{free_port()}"
    ws = make_workspace(
        tmp_path / "ws",
        overrides={
            "registry": {"model_name": name, "experiment": f"exp-{name}"},
            "stack": {"tracking_uri": mlflow_server.url, "prefect_api_url": f"{dead}/api"},
        },
    )
    assert main(["--workspace", str(ws), "status"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "   none running (make demo or loraops up starts them)" in out
    assert "   v2       failed           0.300  -" in out
    assert "   v1       passed           0.900  champion" in out
    trained = "the champion (v1) was trained on aaaaaaaaaaaa, the prepared data is not versioned"
    assert f"== data: {trained}: a retrain would train" in out
    assert any(line.startswith("   unknown (the sync hook at http://127.0.0.1:") for line in out)
    assert (
        f"== last retrain: unknown (the Prefect API at {dead}/api does not answer (`loraops up` starts it))"
        in out
    )
    params = yaml.safe_load((ws / "params.yaml").read_text())
    assert params["registry"]["model_name"] == name


def test_a_deployment_row_names_its_model_schedule_next_run_and_workspace():
    row = DeploymentRow(
        "retrain/ticket-items", "ticket-items", "/ws/items", "cron '30 4 * * 1' (Europe/Paris)", None
    )
    line = row.line()
    assert "retrain/ticket-items" in line and "ticket-items" in line and "(/ws/items)" in line
    assert "next none scheduled" in line
    due = DeploymentRow("retrain/triage", "triage", "/ws", "when triggered", "2026-12-08T03:00+00:00").line()
    assert "next 2026-12-08T03:00+00:00" in due and "when triggered" in due
