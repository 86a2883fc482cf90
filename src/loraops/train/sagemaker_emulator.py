"""SageMaker's side of a training job, played on this machine for an AWS stand-in (moto's server).

moto records CreateTrainingJob and answers DescribeTrainingJob, but runs nothing: its jobs are
"Completed" at once and it has no StopTrainingJob. ``EmulatedSageMaker`` sits in front of it and does
what SageMaker does around the container, with the real in-job entry point
(``loraops.train.sagemaker_entry``) in the trainer environment:

* lays out ``/opt/ml`` in a directory of its own: hyperparameters.json, resourceconfig.json, each
  channel's objects copied from S3, and the checkpoints restored from ``CheckpointConfig.S3Uri``;
* runs the entry point, writing its output to CloudWatch Logs (``/aws/sagemaker/TrainingJobs``,
  stream ``<job>/algo-1-<time>``) and syncing each complete checkpoint to the checkpoint URI;
* with ``interrupt_after_checkpoints``, reclaims the "spot instance" once that many checkpoints reached
  S3 (the process group is killed), then restarts the job on a fresh ``/opt/ml`` with the checkpoints
  restored, as managed spot training does;
* on success packs ``/opt/ml/model`` into ``<S3OutputPath>/<job>/output/model.tar.gz``; on failure
  takes ``/opt/ml/output/failure`` as the FailureReason; honours StopTrainingJob.

DescribeTrainingJob answers moto's record overlaid with the played state (status, secondary status
transitions, times). Billable time: the seconds the container ran; with spot, 30% of them (a typical
spot discount; real SageMaker reports what AWS billed). The launcher refuses the emulator unless the
endpoint is a loopback address, so it never stands in for real AWS.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import tarfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loraops.envs import PythonEnv, require, run_streaming, stop_process_group, trainer_env
from loraops.errors import ConfigError, StageError
from loraops.train.artifacts import checkpoints
from loraops.train.params import SageMakerParams

SPOT_BILLABLE_SHARE = 0.3
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


@dataclass
class _Played:
    """The state of one played job, as DescribeTrainingJob reports it."""

    status: str = "InProgress"
    secondary: str = "Starting"
    transitions: list[dict[str, Any]] = field(default_factory=list)
    failure: str | None = None
    started: float = field(default_factory=time.monotonic)
    running_s: float = 0.0
    training_s: float = 0.0
    start_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    end_time: datetime | None = None
    stop_requested: bool = False
    process: subprocess.Popen[str] | None = None
    thread: threading.Thread | None = None

    def move(self, secondary: str, message: str) -> None:
        now = datetime.now(UTC)
        if self.transitions:
            self.transitions[-1]["EndTime"] = now
        self.transitions.append({"Status": secondary, "StartTime": now, "StatusMessage": message})
        self.secondary = secondary


class EmulatedSageMaker:
    """create/describe/stop_training_job of SageMaker, with the jobs played on this machine."""

    def __init__(
        self,
        clients: Any,
        *,
        work_root: Path,
        params: SageMakerParams,
        trainer: PythonEnv | None = None,
    ) -> None:
        host = urllib.parse.urlparse(params.endpoint_url or "").hostname
        if host not in _LOOPBACK:
            raise ConfigError(
                "train.sagemaker.emulate plays jobs for an AWS stand-in on this machine (moto), but "
                f"endpoint_url is {params.endpoint_url or 'unset (real AWS)'}",
                hint="remove train.sagemaker.emulate to run on SageMaker, or point endpoint_url at moto",
            )
        assert params.emulate is not None
        self.clients = clients
        self.work_root = work_root
        self.params = params
        self.interrupt_after = params.emulate.interrupt_after_checkpoints
        self.trainer = trainer or trainer_env()
        self.jobs: dict[str, _Played] = {}
        self._lock = threading.Lock()

    # -- the SageMaker API ------------------------------------------------------------------------------

    def create_training_job(self, **request: Any) -> dict[str, Any]:
        created: dict[str, Any] = self.clients.sagemaker.create_training_job(**request)
        played = _Played()
        played.move("Starting", "Launching requested ML instances (emulated)")
        name = request["TrainingJobName"]
        with self._lock:
            self.jobs[name] = played
        played.thread = threading.Thread(
            target=self._play, args=(request, played), name=f"emulate-{name}", daemon=True
        )
        played.thread.start()
        return created

    def describe_training_job(self, *, TrainingJobName: str) -> dict[str, Any]:
        desc: dict[str, Any] = dict(
            self.clients.sagemaker.describe_training_job(TrainingJobName=TrainingJobName)
        )
        played = self.jobs.get(TrainingJobName)
        if played is None:
            return desc
        with self._lock:
            desc.update(
                TrainingJobStatus=played.status,
                SecondaryStatus=played.secondary,
                SecondaryStatusTransitions=[dict(t) for t in played.transitions],
                TrainingStartTime=played.start_time,
            )
            if played.end_time is not None:
                desc["TrainingEndTime"] = played.end_time
                desc["TrainingTimeInSeconds"] = max(1, round(played.training_s))
                share = SPOT_BILLABLE_SHARE if self.params.spot else 1.0
                desc["BillableTimeInSeconds"] = max(1, round(played.running_s * share))
            if played.failure:
                desc["FailureReason"] = played.failure
        return desc

    def stop_training_job(self, *, TrainingJobName: str) -> dict[str, Any]:
        played = self.jobs[TrainingJobName]
        with self._lock:
            if played.status != "InProgress":
                return {}
            played.stop_requested = True
            played.status = "Stopping"
            played.move("Stopping", "Stopping the training job (emulated)")
            proc = played.process
        if proc is not None:
            stop_process_group(proc, grace_s=10)
        return {}

    def wait_idle(self, timeout_s: float = 60) -> None:
        """Wait for every played job's thread (tests)."""
        for played in list(self.jobs.values()):
            if played.thread is not None:
                played.thread.join(timeout_s)

    # -- playing a job ----------------------------------------------------------------------------------

    def _play(self, request: dict[str, Any], played: _Played) -> None:
        name = request["TrainingJobName"]
        try:
            attempt = 0
            synced: set[str] = set()
            interrupted = False
            while True:
                attempt += 1
                root = self.work_root / name / f"attempt-{attempt}"
                played.move("Downloading", "Downloading input data (emulated)")
                self._lay_out(request, root)
                played.move("Training", "Training image download completed. Training in progress.")
                code, reclaimed = self._run(request, root, played, synced, may_interrupt=not interrupted)
                if reclaimed:
                    interrupted = True
                    played.move("Interrupted", "The spot instance was reclaimed (emulated interruption)")
                    played.move("Restarting", "Restarting the job from the last checkpoint")
                    continue
                break
            self._finish(request, root, played, code)
        except Exception as exc:  # the job fails, as SageMaker's would; the launcher reports the reason
            with self._lock:
                played.status, played.failure = "Failed", f"emulator: {type(exc).__name__}: {exc}"
                played.end_time = datetime.now(UTC)
                played.training_s = time.monotonic() - played.started

    def _lay_out(self, request: dict[str, Any], root: Path) -> None:
        s3 = self.clients.s3
        config = root / "input" / "config"
        config.mkdir(parents=True, exist_ok=True)
        (config / "hyperparameters.json").write_text(json.dumps(request.get("HyperParameters", {})))
        hosts = [f"algo-{i + 1}" for i in range(request["ResourceConfig"]["InstanceCount"])]
        (config / "resourceconfig.json").write_text(json.dumps({"current_host": hosts[0], "hosts": hosts}))
        for channel in request["InputDataConfig"]:
            bucket, prefix = _s3(channel["DataSource"]["S3DataSource"]["S3Uri"])
            dest = root / "input" / "data" / channel["ChannelName"]
            base = prefix[: prefix.rfind("/") + 1]  # keys land relative to the prefix's folder
            for obj in _list(s3, bucket, prefix):
                target = dest / obj["Key"][len(base) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, obj["Key"], str(target))
        local = root / "checkpoints"
        local.mkdir(parents=True, exist_ok=True)
        bucket, prefix = _s3(request["CheckpointConfig"]["S3Uri"])
        prefix = prefix.rstrip("/") + "/"
        for obj in _list(s3, bucket, prefix):
            target = local / obj["Key"][len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target))

    def _run(
        self, request: dict[str, Any], root: Path, played: _Played, synced: set[str], *, may_interrupt: bool
    ) -> tuple[int, bool]:
        """Run the container's program once; (exit code, whether the spot instance was reclaimed)."""
        name = request["TrainingJobName"]
        trainer = require(self.trainer)
        logs = _LogWriter(self.clients.logs, f"{name}/algo-1-{int(time.time())}")
        began = time.monotonic()

        def started(proc: subprocess.Popen[str]) -> None:
            with self._lock:
                played.process = proc
                stop_now = played.stop_requested
            if stop_now:
                stop_process_group(proc, grace_s=5)

        def each_line(line: str) -> None:
            logs.add(line)
            count = self._sync_checkpoints(request, root, synced)
            if may_interrupt and self.interrupt_after is not None and count >= self.interrupt_after:
                logs.add(f"[emulator] reclaiming the spot instance after {count} checkpoint(s) reached S3")
                raise _Reclaimed

        code = 0
        try:
            run_streaming(
                [trainer.python, "-m", "loraops.train.sagemaker_entry"],
                env=trainer.environ({"LORAOPS_SM_ROOT": str(root), **request.get("Environment", {})}),
                on_line=each_line,
                on_start=started,
                what=f"training job {name}",
            )
        except _Reclaimed:  # run_streaming stopped the process group: the instance is gone
            return -signal.SIGTERM, True
        except StageError:
            proc = played.process
            code = proc.returncode if proc is not None and proc.returncode is not None else 1
        finally:
            logs.flush()
            played.running_s += time.monotonic() - began
        self._sync_checkpoints(request, root, synced)
        return code or 0, False

    def _sync_checkpoints(self, request: dict[str, Any], root: Path, synced: set[str]) -> int:
        """Upload complete checkpoints not yet in S3 (SageMaker syncs the local path continuously)."""
        bucket, prefix = _s3(request["CheckpointConfig"]["S3Uri"])
        local = root / "checkpoints"
        for checkpoint in checkpoints(local):
            if checkpoint.path.name in synced:
                continue
            for path in sorted(p for p in checkpoint.path.rglob("*") if p.is_file()):
                key = f"{prefix.rstrip('/')}/{path.relative_to(local)}"
                self.clients.s3.upload_file(str(path), bucket, key)
            synced.add(checkpoint.path.name)
        return len(synced)

    def _finish(self, request: dict[str, Any], root: Path, played: _Played, code: int) -> None:
        end = datetime.now(UTC)
        with self._lock:
            played.training_s = time.monotonic() - played.started
            played.end_time = end
            played.process = None
        if played.stop_requested:
            with self._lock:
                played.status = "Stopped"
                played.move("Stopped", "Training job stopped (emulated)")
            return
        if code != 0:
            failure = root / "output" / "failure"
            reason = failure.read_text("utf-8").strip() if failure.is_file() else f"exit code {code}"
            with self._lock:
                played.status, played.failure = "Failed", f"AlgorithmError: {reason}"
                played.move("Failed", "Training job failed")
            return
        model = root / "model"
        archive = root / "output" / "model.tar.gz"
        archive.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "w:gz") as tar:
            for path in sorted(model.rglob("*")):
                tar.add(path, arcname=str(path.relative_to(model)), recursive=False)
        bucket, prefix = _s3(request["OutputDataConfig"]["S3OutputPath"])
        key = f"{prefix.rstrip('/')}/{request['TrainingJobName']}/output/model.tar.gz".lstrip("/")
        played.move("Uploading", "Uploading generated training model (emulated)")
        self.clients.s3.upload_file(str(archive), bucket, key)
        with self._lock:
            played.status = "Completed"
            played.move("Completed", "Training job completed")


def _list(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    token = None
    while True:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if token:
            kwargs["ContinuationToken"] = token
        page = s3.list_objects_v2(**kwargs)
        found.extend(page.get("Contents", []))
        token = page.get("NextContinuationToken")
        if not token:
            return found


class _Reclaimed(Exception):
    """Raised from the output loop to reclaim the emulated spot instance (kills the container)."""


class _LogWriter:
    """Lines of one container to one CloudWatch log stream, in batches (about one call a second)."""

    def __init__(self, logs: Any, stream: str) -> None:
        self.logs = logs
        self.stream = stream
        self.pending: list[dict[str, Any]] = []
        self.last = time.monotonic()
        with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
            logs.create_log_group(logGroupName=LOG_GROUP)
        logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)

    def add(self, line: str) -> None:
        self.pending.append({"timestamp": int(time.time() * 1000), "message": line or " "})
        if time.monotonic() - self.last >= 1.0 or len(self.pending) >= 500:
            self.flush()

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        self.last = time.monotonic()
        if pending:
            self.logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=self.stream, logEvents=pending)
