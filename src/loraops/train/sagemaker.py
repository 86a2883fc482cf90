"""The sagemaker launcher: a training job on AWS SageMaker, created and watched with boto3.

What the job gets (see ``training_job_request``): the trainer image from params, the prepared data as
input channels read straight from the DVC S3 remote (the content-addressed objects of this data
version, so the job trains on exactly what was versioned), a ``config`` channel with the job spec and
the replay file, the base model (a built one is uploaded once under ``<s3_prefix>/base-models/``),
managed spot with a checkpoint S3 URI keyed by the job's fingerprint (a restarted or rerun job resumes
from the last checkpoint), and the output path where SageMaker puts ``model.tar.gz``.

While the job runs the launcher polls DescribeTrainingJob with exponential backoff, prints each status
change, and streams the job's CloudWatch log into ``on_line`` (so the flow log shows the training as
it happens). If the caller is interrupted (a cancelled flow run, Ctrl-C) it calls StopTrainingJob and
waits for the job to stop before re-raising. A failed job ends in one line with its FailureReason.
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from loraops.data.params import RemoteParams
from loraops.errors import ConfigError, StageError
from loraops.files import file_md5
from loraops.train.artifacts import collect_adapter
from loraops.train.cost import sagemaker_cost
from loraops.train.job import TrainJob
from loraops.train.local import parse_resume_line
from loraops.train.params import SageMakerParams
from loraops.train.render import parse_metrics_line
from loraops.train.result import TrainResult
from loraops.workspace import Workspace

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
TERMINAL = ("Completed", "Failed", "Stopped")
CONTAINER_CHECKPOINTS = "/opt/ml/checkpoints"
COMPLETE_MARKER = ".loraops-complete"
MAX_POLL_FAILURES = 8
# Axolotl prints HF Trainer logs as dicts of quoted numbers: {'loss': '0.6063', ...}
METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": r"'loss': '?([0-9.]+(?:e-?[0-9]+)?)"},
    {"Name": "eval:loss", "Regex": r"'eval_loss': '?([0-9.]+(?:e-?[0-9]+)?)"},
]


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str  # no leading slash; may be "" (the bucket) or end without "/"

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        if not uri.startswith("s3://"):
            raise ConfigError(f"{uri!r} is not an s3:// URI")
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        return cls(bucket, key.strip("/"))

    def join(self, *parts: str) -> S3Uri:
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3Uri(self.bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"


class LostTrackError(StageError):
    """DescribeTrainingJob kept failing: the job's state is unknown (it may still run)."""


class TrainingJobs(Protocol):
    """The three SageMaker calls the launcher makes (boto3's client, or the emulator in front of moto)."""

    def create_training_job(self, **request: Any) -> dict[str, Any]: ...

    def describe_training_job(self, *, TrainingJobName: str) -> dict[str, Any]: ...

    def stop_training_job(self, *, TrainingJobName: str) -> dict[str, Any]: ...


@dataclass
class AwsClients:
    """boto3 clients of one region and endpoint (moto's server in tests, AWS otherwise)."""

    sagemaker: Any
    s3: Any
    logs: Any

    @classmethod
    def create(cls, region: str, endpoint_url: str | None) -> AwsClients:
        import boto3

        session = boto3.session.Session(region_name=region)
        return cls(*(session.client(name, endpoint_url=endpoint_url) for name in ("sagemaker", "s3", "logs")))


def job_name(model_name: str, fingerprint: str, now: datetime) -> str:
    """A unique, readable job name within SageMaker's 63 characters of [a-zA-Z0-9-]."""
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", model_name).strip("-")[:24] or "adapter"
    return f"loraops-{slug}-{fingerprint[:8]}-{now.strftime('%Y%m%d-%H%M%S')}"


def dvc_object_uri(remote: S3Uri, md5: str) -> S3Uri:
    """Where DVC 3 keeps a file of this content in an S3 remote."""
    return remote.join("files", "md5", md5[:2], md5[2:])


def training_job_request(
    *,
    name: str,
    params: SageMakerParams,
    job: TrainJob,
    channels: dict[str, str],
    output_uri: str,
    checkpoint_uri: str,
    environment: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The CreateTrainingJob request (pure): the container, the channels, spot and checkpoints."""
    settings = job.settings
    stopping: dict[str, int] = {"MaxRuntimeInSeconds": params.max_run_s}
    if params.spot:
        stopping["MaxWaitTimeInSeconds"] = params.wait_s()
    tags = {"loraops:fingerprint": job.fingerprint(), "loraops:preset": job.preset_name, **params.tags}
    return {
        "TrainingJobName": name,
        "RoleArn": params.role_arn,
        "AlgorithmSpecification": {
            "TrainingImage": params.image_uri,
            "TrainingInputMode": "File",
            "MetricDefinitions": METRIC_DEFINITIONS,
            "EnableSageMakerMetricsTimeSeries": True,
        },
        # Shown in the SageMaker console; the job itself reads its spec from the config channel.
        "HyperParameters": {
            "loraops_spec": "job.json",
            "loraops_fingerprint": job.fingerprint(),
            "adapter": settings.adapter,
            "lora_r": str(settings["lora_r"]),
            "learning_rate": str(settings["learning_rate"]),
            "num_epochs": str(settings["num_epochs"]),
        },
        "InputDataConfig": [
            {
                "ChannelName": channel,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": uri,
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "InputMode": "File",
            }
            for channel, uri in channels.items()
        ],
        "OutputDataConfig": {"S3OutputPath": output_uri},
        "ResourceConfig": {
            "InstanceType": params.instance_type,
            "InstanceCount": params.instance_count,
            "VolumeSizeInGB": params.volume_size_gb,
        },
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": params.spot,
        "CheckpointConfig": {"S3Uri": checkpoint_uri, "LocalPath": CONTAINER_CHECKPOINTS},
        "Environment": {**(environment or {}), **params.environment},
        "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
    }


class LogTail:
    """New lines of a training job's CloudWatch log streams (``<job>/algo-N-...``) since the last call."""

    def __init__(self, logs: Any, job: str) -> None:
        self._logs = logs
        self._job = job
        self._tokens: dict[str, str | None] = {}

    def poll(self) -> list[str]:
        try:
            streams = self._logs.describe_log_streams(
                logGroupName=LOG_GROUP, logStreamNamePrefix=f"{self._job}/"
            )
        except self._logs.exceptions.ResourceNotFoundException:
            return []  # the log group appears with the job's first line
        lines: list[str] = []
        for stream in sorted(s["logStreamName"] for s in streams.get("logStreams", [])):
            while True:
                kwargs: dict[str, Any] = {
                    "logGroupName": LOG_GROUP,
                    "logStreamName": stream,
                    "startFromHead": True,
                }
                token = self._tokens.get(stream)
                if token:
                    kwargs["nextToken"] = token
                page = self._logs.get_log_events(**kwargs)
                lines.extend(str(e["message"]) for e in page.get("events", []))
                new = page.get("nextForwardToken")
                if new == token or not page.get("events"):
                    self._tokens[stream] = new or token
                    break
                self._tokens[stream] = new
        return lines


def _iter_objects(s3: Any, uri: S3Uri) -> Iterator[dict[str, Any]]:
    token = None
    while True:
        kwargs: dict[str, Any] = {"Bucket": uri.bucket, "Prefix": uri.key}
        if token:
            kwargs["ContinuationToken"] = token
        page = s3.list_objects_v2(**kwargs)
        yield from page.get("Contents", [])
        token = page.get("NextContinuationToken")
        if not token:
            return


def _exists(s3: Any, uri: S3Uri) -> bool:
    try:
        s3.head_object(Bucket=uri.bucket, Key=uri.key)
    except s3.exceptions.ClientError:
        return False
    return True


def upload_dir(s3: Any, local: Path, uri: S3Uri) -> None:
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        s3.upload_file(str(path), uri.bucket, uri.join(str(path.relative_to(local))).key)


def extract_model(archive: Path, dest: Path) -> Path:
    """Unpack model.tar.gz with tarfile's 'data' filter (no links out, no absolute paths)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest


class SageMakerLauncher:
    """Trains a job on SageMaker; the adapter comes back from the job's model.tar.gz."""

    name = "sagemaker"

    def __init__(
        self,
        params: SageMakerParams,
        workspace: Workspace,
        *,
        data_remote: RemoteParams | None = None,
        model_name: str = "adapter",
        clients: AwsClients | None = None,
        jobs: TrainingJobs | None = None,
        data_s3: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.params = params
        self.workspace = workspace
        self.data_remote = data_remote
        self.model_name = model_name
        self.clients = clients or AwsClients.create(params.region, params.endpoint_url)
        self.jobs: TrainingJobs = jobs or self._jobs_backend()
        self.data_s3 = data_s3 or self._data_s3_client()
        self.sleep = sleep

    def _jobs_backend(self) -> TrainingJobs:
        if self.params.emulate is None:
            return self.clients.sagemaker
        from loraops.train.sagemaker_emulator import EmulatedSageMaker

        return EmulatedSageMaker(
            self.clients, work_root=self.workspace.runs / "sagemaker-emulator", params=self.params
        )

    def _data_s3_client(self) -> Any:
        remote = self.data_remote
        if remote is None or remote.endpoint_url in (None, self.params.endpoint_url):
            return self.clients.s3
        import boto3

        return boto3.session.Session(region_name=self.params.region).client(
            "s3", endpoint_url=remote.endpoint_url
        )

    # -- inputs -----------------------------------------------------------------------------------------

    def _data_channel(self, path: Path) -> str:
        """The S3 URI of a prepared file in the DVC remote (checked to exist there)."""
        if self.data_remote is None or not self.data_remote.is_s3:
            where = self.data_remote.url if self.data_remote else "(none)"
            raise ConfigError(
                "train.launcher sagemaker reads the prepared data from the DVC remote in S3, but "
                f"data.remote.url is {where}",
                hint="set data.remote.url: s3://bucket/prefix (the CloudFormation stack's bucket) and "
                "version the data again",
            )
        uri = dvc_object_uri(S3Uri.parse(self.data_remote.url), file_md5(path))
        if not _exists(self.data_s3, uri):
            raise StageError(
                f"{path.name} ({uri}) is not in the DVC remote {self.data_remote.url}",
                hint="push it first: `loraops data version` (dvc push)",
            )
        return str(uri)

    def _base_model_channel(self, job: TrainJob, prefix: S3Uri) -> str | None:
        if self.params.base_model_s3_uri:  # a folder: its files land in the channel directory itself
            return self.params.base_model_s3_uri.rstrip("/") + "/"
        local = Path(job.base_model)
        if not local.is_dir():
            return None  # a Hugging Face id: the job downloads it (HF_TOKEN in train.sagemaker.environment)
        uri = prefix.join("base-models", local.name)
        if not _exists(self.clients.s3, uri.join(COMPLETE_MARKER)):
            upload_dir(self.clients.s3, local, uri)
            self.clients.s3.put_object(Bucket=uri.bucket, Key=uri.join(COMPLETE_MARKER).key, Body=b"")
        return str(uri) + "/"

    def _upload_config(self, job: TrainJob, uri: S3Uri) -> str:
        spec = job.to_spec()
        self.clients.s3.put_object(
            Bucket=uri.bucket, Key=uri.join("job.json").key, Body=json.dumps(spec, indent=2).encode()
        )
        if job.replay_file is not None:
            self.clients.s3.upload_file(str(job.replay_file), uri.bucket, uri.join(job.replay_file.name).key)
        return str(uri) + "/"

    def prepare_request(self, job: TrainJob, name: str) -> dict[str, Any]:
        """Upload what the job reads and build its CreateTrainingJob request."""
        prefix = S3Uri.parse(self.params.s3_prefix)
        channels = {"config": self._upload_config(job, prefix.join("jobs", name, "input", "config"))}
        channels["train"] = self._data_channel(job.train_file)
        if job.val_file is not None:
            channels["val"] = self._data_channel(job.val_file)
        environment = {
            "HF_HUB_ENABLE_HF_TRANSFER": "0",
            "WANDB_MODE": "disabled",
            "AXOLOTL_DO_NOT_TRACK": "1",
        }
        base = self._base_model_channel(job, prefix)
        if base is not None:
            channels["base_model"] = base
            environment["HF_HUB_OFFLINE"] = "1"
        return training_job_request(
            name=name,
            params=self.params,
            job=job,
            channels=channels,
            output_uri=str(prefix.join("jobs")),
            checkpoint_uri=str(self.checkpoint_uri(job)),
            environment=environment,
        )

    def checkpoint_uri(self, job: TrainJob) -> S3Uri:
        return S3Uri.parse(self.params.s3_prefix).join("checkpoints", job.fingerprint())

    # -- the job ----------------------------------------------------------------------------------------

    def wait(self, name: str, on_line: Callable[[str], None]) -> dict[str, Any]:
        """Poll until the job ends, printing status changes and its log.

        A transient AWS error (throttling, a dropped connection) is retried with the same backoff. Anything
        else that ends the wait (Ctrl-C, a cancelled flow run's TerminationSignal, an error of the flow
        itself) stops the job before going on, so that no job runs and bills with nobody to collect it;
        only a job that cannot be reached any more is left alone.
        """
        tail = LogTail(self.clients.logs, name)
        delay = self.params.poll_initial_s
        seen_transitions = 0
        failures = 0
        try:
            while True:
                try:
                    desc = self.jobs.describe_training_job(TrainingJobName=name)
                    lines = tail.poll()
                except (BotoCoreError, ClientError) as exc:
                    failures += 1
                    if failures > MAX_POLL_FAILURES:
                        raise LostTrackError(
                            f"lost track of SageMaker job {name} after {failures} failed polls: {exc}",
                            hint=f"the job may still run: {self.console_url(name)}",
                        ) from None
                    on_line(f"[loraops] polling {name} failed ({exc}); retrying")
                    self.sleep(delay)
                    delay = min(delay * 2, self.params.poll_max_s)
                    continue
                failures = 0
                for line in lines:
                    on_line(line)
                transitions = desc.get("SecondaryStatusTransitions") or []
                for step in transitions[seen_transitions:]:
                    status, message = step.get("Status"), step.get("StatusMessage", "")
                    on_line(f"[loraops] {name}: {status}: {message}".rstrip(": "))
                    delay = self.params.poll_initial_s
                seen_transitions = max(seen_transitions, len(transitions))
                if desc["TrainingJobStatus"] in TERMINAL:
                    for line in tail.poll():
                        on_line(line)
                    return desc
                self.sleep(delay)
                delay = min(delay * 2, self.params.poll_max_s)
        except LostTrackError:
            raise
        except BaseException:
            self.stop(name, on_line)
            raise

    def stop(self, name: str, on_line: Callable[[str], None]) -> None:
        """StopTrainingJob, then wait (bounded) until SageMaker reports the job ended."""
        on_line(f"[loraops] stopping SageMaker job {name}")
        try:
            self.jobs.stop_training_job(TrainingJobName=name)
        except Exception as exc:  # the job may have ended meanwhile
            on_line(f"[loraops] StopTrainingJob {name}: {exc}")
            return
        deadline = time.monotonic() + self.params.stop_timeout_s
        delay = self.params.poll_initial_s
        while time.monotonic() < deadline:
            status = self.jobs.describe_training_job(TrainingJobName=name)["TrainingJobStatus"]
            if status in TERMINAL:
                on_line(f"[loraops] SageMaker job {name} is {status}")
                return
            self.sleep(delay)
            delay = min(delay * 2, self.params.poll_max_s)
        on_line(f"[loraops] SageMaker job {name} did not stop within {self.params.stop_timeout_s:.0f} s")

    def check_completed(self, desc: dict[str, Any]) -> None:
        """One line with SageMaker's FailureReason when the job did not complete."""
        status, name = desc["TrainingJobStatus"], desc["TrainingJobName"]
        if status != "Completed":
            reason = " ".join(str(desc.get("FailureReason") or "no reason given").split())
            raise StageError(
                f"SageMaker training job {name} {status.lower()}: {reason}", hint=self.console_url(name)
            )

    def console_url(self, name: str) -> str:
        region = self.params.region
        return f"https://{region}.console.aws.amazon.com/sagemaker/home?region={region}#/jobs/{name}"

    def _fetch_adapter(self, desc: dict[str, Any], run_dir: Path) -> tuple[Path, Path]:
        uri = S3Uri.parse(desc["ModelArtifacts"]["S3ModelArtifacts"])
        archive = run_dir / "job-output" / "model.tar.gz"
        archive.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.clients.s3.download_file(uri.bucket, uri.key, str(archive))
        except self.clients.s3.exceptions.ClientError as exc:
            raise StageError(f"the job's output {uri} could not be downloaded: {exc}") from None
        model_dir = extract_model(archive, run_dir / "job-output" / "model")
        adapter = collect_adapter(model_dir, run_dir / "adapter", log_hint=f"see the job's log ({LOG_GROUP})")
        config = run_dir / "axolotl.yaml"
        if (model_dir / "axolotl.yaml").is_file():
            shutil.copy2(model_dir / "axolotl.yaml", config)
        return adapter, config

    def _clear_checkpoints(self, job: TrainJob) -> None:
        """A finished job's checkpoints go, so that the next run of the same job trains anew."""
        uri = self.checkpoint_uri(job)
        keys = [{"Key": o["Key"]} for o in _iter_objects(self.clients.s3, uri.join(""))]
        for start in range(0, len(keys), 1000):
            self.clients.s3.delete_objects(Bucket=uri.bucket, Delete={"Objects": keys[start : start + 1000]})

    def train(
        self, job: TrainJob, run_dir: Path, *, on_line: Callable[[str], None] | None = None
    ) -> TrainResult:
        started = time.monotonic()
        history: list[dict[str, float]] = []
        resumed: list[int] = []
        run_dir.mkdir(parents=True, exist_ok=True)
        log_file = run_dir / "training-job.log"

        def collect(line: str) -> None:
            with log_file.open("a", encoding="utf-8") as log:
                log.write(line + "\n")
            metrics = parse_metrics_line(line)
            if metrics is not None:
                history.append(metrics)
            step = parse_resume_line(line)
            if step is not None:
                resumed.append(step)
            if on_line is not None:
                on_line(line)

        name = job_name(self.model_name, job.fingerprint(), datetime.now(UTC))
        request = self.prepare_request(job, name)
        (run_dir / "training-job.json").write_text(json.dumps(request, indent=2))
        collect("[loraops] CreateTrainingJob request:\n" + json.dumps(request, indent=2))
        collect(
            f"[loraops] creating SageMaker training job {name}: {self.params.instance_count} x "
            f"{self.params.instance_type}, {'managed spot' if self.params.spot else 'on demand'}, "
            f"image {self.params.image_uri}"
        )
        prepare_s = time.monotonic() - started
        created = self.jobs.create_training_job(**request)
        desc = self.wait(name, collect)
        status = desc["TrainingJobStatus"]
        if status != "Completed":
            reason = " ".join(str(desc.get("FailureReason") or "no reason given").split())
            raise StageError(
                f"SageMaker training job {name} {status.lower()}: {reason}", hint=self.console_url(name)
            )
        adapter, config = self._fetch_adapter(desc, run_dir)
        self._clear_checkpoints(job)
        interruptions = sum(
            1 for t in desc.get("SecondaryStatusTransitions") or [] if t.get("Status") == "Interrupted"
        )
        price = self.params.price()
        cost = None
        if price is not None:
            cost = sagemaker_cost(
                billable_s=float(desc.get("BillableTimeInSeconds") or 0),
                training_s=float(desc.get("TrainingTimeInSeconds") or 0),
                instance_type=self.params.instance_type,
                instances=self.params.instance_count,
                usd_per_hour=price,
            )
        else:
            collect(
                f"[loraops] no price for {self.params.instance_type} in train.sagemaker.usd_per_hour: "
                "cost unknown"
            )
        return TrainResult(
            adapter_dir=adapter,
            config_path=config,
            log_file=log_file,
            duration_s=time.monotonic() - started,
            history=history,
            launcher=self.name,
            cost=cost,
            resumed_from_step=resumed[-1] if resumed else None,
            details={
                "job_name": name,
                "job_arn": created.get("TrainingJobArn", desc.get("TrainingJobArn", "")),
                "instance_type": self.params.instance_type,
                "instance_count": self.params.instance_count,
                "spot": self.params.spot,
                "interruptions": interruptions,
                "prepare_s": prepare_s,
                "billable_s": float(desc.get("BillableTimeInSeconds") or 0),
                "training_s": float(desc.get("TrainingTimeInSeconds") or 0),
            },
        )
