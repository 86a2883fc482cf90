"""The retrain loop's orchestration (loraops.loop.pipeline) with small fakes behind its step Protocol:
which steps run in which order, the skip rule, a gate refusal, a promotion that fails and rolls the alias
back. The same function runs inside the Prefect flow, each step a task (tests/test_e2e_demo.py)."""

from __future__ import annotations

import urllib.error
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, RESOURCE_DOES_NOT_EXIST

from loraops.config import Params, load_params
from loraops.data.versioning import DataVersion
from loraops.errors import ConfigError, DataError, StackError, StageError
from loraops.gate.decision import Check, GateDecision
from loraops.gate.promote import apply_decision
from loraops.loop.pipeline import Registered, ReportFiles, RetrainOutcome, Trained, run_retrain
from loraops.loop.rules import is_transient, services_needed, unreachable
from loraops.loop.runlog import training_log
from loraops.registry.tracking import ModelVersionInfo
from loraops.services import free_port
from loraops.stack.local import StackUrls
from loraops.train.result import TrainResult

HASH_A = "a" * 32
HASH_B = "b" * 32


class FakeRegistry:
    """The alias part of loraops.registry.tracking.Registry, in memory."""

    def __init__(self, champion: str | None) -> None:
        self.aliases: dict[str, str] = {"champion": champion} if champion else {}
        self.moves: list[tuple[str, str | None]] = []

    def champion(self) -> ModelVersionInfo | None:
        version = self.aliases.get("champion")
        return ModelVersionInfo("m", version, None, "") if version else None

    def set_champion(self, version: str) -> None:
        self.set_alias("champion", version)

    def set_alias(self, alias: str, version: str) -> None:
        self.aliases[alias] = version
        self.moves.append((alias, version))

    def clear_champion(self) -> None:
        self.aliases.pop("champion", None)
        self.moves.append(("champion", None))


class FakeReport:
    def metrics(self) -> dict[str, float]:
        return {"task.candidate.score": 0.9}


class FakeSteps:
    """Records the steps called; the data hash, the champion and the gate's verdict are set per test.
    ``promote`` is the real apply_decision over a FakeRegistry and a sync hook that never answers."""

    def __init__(
        self,
        params: Params,
        *,
        data_hash: str = HASH_A,
        champion: tuple[str, dict[str, str]] | None = None,
        passes: bool = True,
    ) -> None:
        self.params = params
        self.data_hash = data_hash
        self._champion = champion
        self.passes = passes
        self.calls: list[str] = []
        self.registry = FakeRegistry(champion[0] if champion else None)
        self.dead_hook = f"http://127.0.0.1:{free_port()}"

    def preflight(self) -> None:
        self.calls.append("preflight")

    def prepare(self) -> Any:
        self.calls.append("prepare")
        return "prepared"

    def version(self) -> DataVersion:
        self.calls.append("version")
        return DataVersion(self.data_hash, "c0ffee", "data/prepared")

    def champion(self) -> tuple[str, dict[str, str]] | None:
        self.calls.append("champion")
        return self._champion

    def train(self, prepared: Any, data: DataVersion) -> Trained:
        self.calls.append("train")
        result = TrainResult(Path("adapter"), Path("config.yaml"), Path("train.log"), 12.0, [{"loss": 1.0}])
        return Trained(result, "run-1")

    def register(self, trained: Trained, data: DataVersion, prepared: Any) -> Registered:
        self.calls.append("register")
        return Registered("m", "4", trained.run_id, "http://run", "http://v4", data.tag())

    def evaluate(self, registered: Registered, prepared: Any) -> FakeReport:
        self.calls.append("evaluate")
        return FakeReport()

    def gate(self, report: Any, facts: Any) -> GateDecision:
        self.calls.append("gate")
        check = Check("gain vs base", 0.1 if self.passes else -0.1, 0.0, self.passes, "lower bound")
        return GateDecision(self.passes, [check])

    def report(self, registered: Registered, report: Any, decision: GateDecision, facts: Any) -> ReportFiles:
        self.calls.append("report")
        return ReportFiles("report.html", None)

    def record(self, *args: Any) -> None:
        self.calls.append("record")

    def promote(self, registered: Registered, decision: GateDecision) -> tuple[str | None, str | None]:
        self.calls.append("promote")
        urls = StackUrls("http://mlflow", "", "", "http://server/v1", self.dead_hook)
        version = ModelVersionInfo("m", registered.version, registered.run_id, "")
        return apply_decision(
            self.registry,  # type: ignore[arg-type]
            self.params,
            version,
            decision.passed,
            urls,
            "token",
            timeout_s=1.0,
        )


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(Path(__file__).resolve().parents[1] / "params.yaml")


def _run(steps: FakeSteps, **kwargs: Any) -> RetrainOutcome:
    return run_retrain(steps, model_name="m", champion_alias="champion", **kwargs)


def test_unchanged_data_ends_the_run_before_training(params: Params) -> None:
    steps = FakeSteps(params, data_hash=HASH_A, champion=("3", {"data.dvc_hash": HASH_A}))
    events: list[str] = []
    outcome = _run(steps, on_event=events.append)
    assert steps.calls == ["preflight", "prepare", "version", "champion"]
    assert outcome.state == "skipped"
    assert outcome.champion_before == "3"
    assert outcome.skipped == f"data {HASH_A[:12]} unchanged: the champion (version 3) was trained on it"
    assert events == [f"nothing to train: {outcome.skipped}"]
    notice = outcome.notice("http://prefect/runs/1")
    assert notice is not None and (notice.event, notice.version) == ("skipped", "3")


def test_forced_run_trains_on_unchanged_data(params: Params) -> None:
    steps = FakeSteps(params, data_hash=HASH_A, champion=("3", {"data.dvc_hash": HASH_A}), passes=False)
    outcome = _run(steps, force=True)
    assert steps.calls[3:6] == ["champion", "train", "register"]
    assert outcome.state == "refused"


def test_changed_data_runs_every_step_in_order_and_promotes(params: Params) -> None:
    steps = FakeSteps(params, data_hash=HASH_B, champion=("3", {"data.dvc_hash": HASH_A}))
    with pytest.raises(StageError, match="passed the gate but the server did not serve it"):
        _run(steps)  # the hook never answers: see the rollback test below
    assert steps.calls == [
        "preflight",
        "prepare",
        "version",
        "champion",
        "train",
        "register",
        "evaluate",
        "gate",
        "report",
        "record",
        "promote",
    ]


def test_a_promotion_that_is_never_served_moves_the_champion_back(params: Params) -> None:
    steps = FakeSteps(params, data_hash=HASH_B, champion=("3", {"data.dvc_hash": HASH_A}))
    with pytest.raises(StageError, match="the alias was moved back"):
        _run(steps)
    assert steps.registry.moves == [("champion", "4"), ("champion", "3")]
    assert steps.registry.aliases == {"champion": "3"}


def test_a_first_promotion_that_is_never_served_leaves_no_champion(params: Params) -> None:
    steps = FakeSteps(params, data_hash=HASH_B, champion=None)
    with pytest.raises(StageError):
        _run(steps)
    assert steps.registry.moves == [("champion", "4"), ("champion", None)]
    assert steps.registry.aliases == {}


def test_a_gate_refusal_moves_no_alias_and_is_notified(params: Params) -> None:
    steps = FakeSteps(params, data_hash=HASH_B, champion=("3", {"data.dvc_hash": HASH_A}), passes=False)
    outcome = _run(steps)
    assert steps.calls[-1] == "promote"
    assert steps.registry.moves == []
    assert outcome.state == "refused"
    assert outcome.gate_passed is False
    assert outcome.judgement is not None
    assert outcome.judgement.summary == "gate FAIL: gain vs base: lower bound"
    assert outcome.judgement.scores == {"task.candidate.score": 0.9}
    notice = outcome.notice()
    assert notice is not None
    assert (notice.event, notice.version, notice.run_url) == ("refused", "4", "http://run")


def test_without_evaluation_the_run_ends_at_registration(params: Params) -> None:
    steps = FakeSteps(params, data_hash=HASH_B, champion=None)
    outcome = _run(steps, evaluate=False)
    assert steps.calls == ["preflight", "prepare", "version", "champion", "train", "register"]
    assert outcome.state == "registered"
    assert outcome.registered is not None and outcome.registered.version == "4"
    assert outcome.notice() is None


def test_the_first_run_trains_when_nothing_is_champion(params: Params) -> None:
    steps = FakeSteps(params, data_hash=HASH_A, champion=None, passes=False)
    outcome = _run(steps)
    assert "train" in steps.calls
    assert outcome.champion_before is None


def _mlflow_error(status: int) -> StageError:
    try:
        try:
            raise MlflowException(
                "boom", error_code=INTERNAL_ERROR if status >= 500 else RESOURCE_DOES_NOT_EXIST
            )
        except MlflowException as exc:
            raise StageError("MLflow failed while registering") from exc
    except StageError as wrapped:
        return wrapped


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (StackError("MLflow at http://x is not reachable"), True),
        (ConnectionRefusedError(111, "refused"), True),
        (TimeoutError("timed out"), True),
        (urllib.error.URLError("refused"), True),
        (urllib.error.HTTPError("http://x", 503, "unavailable", {}, None), True),  # type: ignore[arg-type]
        (urllib.error.HTTPError("http://x", 404, "not found", {}, None), False),  # type: ignore[arg-type]
        (EndpointConnectionError(endpoint_url="http://s3"), True),
        (ClientError({"Error": {"Code": "SlowDown"}}, "PutObject"), True),
        (ClientError({"Error": {"Code": "AccessDenied"}}, "PutObject"), False),
        (_mlflow_error(500), True),
        (_mlflow_error(404), False),
        (DataError("data/raw.jsonl:3: missing key 'output'"), False),
        (ConfigError("params.yaml:4: train.lora_r"), False),
        (StageError("axolotl exited with 1"), False),
        (ValueError("bad"), False),
    ],
)
def test_only_transient_errors_are_retried(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_preflight_names_every_service_that_does_not_answer() -> None:
    needed = services_needed(
        "http://127.0.0.1:5000",
        "http://127.0.0.1:8000",
        "http://127.0.0.1:8765",
        evaluate=True,
        promotes=True,
    )
    assert needed == {
        "MLflow": "http://127.0.0.1:5000/health",
        "vLLM server": "http://127.0.0.1:8000/health",
        "alias sync hook": "http://127.0.0.1:8765/health",
    }
    down = unreachable(needed, lambda url: ":8000" in url)
    assert down == ["MLflow (http://127.0.0.1:5000)", "alias sync hook (http://127.0.0.1:8765)"]
    train_only = services_needed("file:///tmp/mlruns", "http://s", "http://h", evaluate=False, promotes=True)
    assert train_only == {}


def test_a_bad_cron_expression_names_file_line_and_key(tmp_path: Path) -> None:
    params_file = tmp_path / "params.yaml"
    params_file.write_text("schedule:\n  on_overlap: skip\n  cron: '61 * * * *'\n")
    with pytest.raises(ConfigError, match=r"params.yaml:3: schedule.cron: not a cron expression"):
        load_params(params_file)
    params_file.write_text("schedule:\n  on_overlap: sometimes\n")
    with pytest.raises(
        ConfigError, match=r"params.yaml:2: schedule.on_overlap: Input should be 'wait' or 'skip'"
    ):
        load_params(params_file)


def test_the_run_log_keeps_loraops_lines_every_tenth_loss_and_each_validation() -> None:
    kept: list[str] = []
    step = 0
    show = training_log(kept.append, lambda: step, remote=False)
    show("[loraops] resuming from checkpoint-20")
    for step in range(1, 13):
        show(f"{{'loss': {1.0 / step:.4f}, 'grad_norm': 1.0, 'epoch': {step / 10:.2f}}}")
    show("{'eval_loss': 0.5, 'epoch': 1.2}")
    show(" 40%|####      | 4/10 [00:01<00:02, 2.50it/s]")
    assert kept == [
        "resuming from checkpoint-20",
        "train step 1 epoch 0.10 loss 1.0000",
        "train step 11 epoch 1.10 loss 0.0909",
        "val   epoch 1.20 loss 0.5000",
    ]
    remote: list[str] = []
    training_log(remote.append, lambda: 0, remote=True)("Invoking script with the following command:")
    assert remote == ["[job] Invoking script with the following command:"]
