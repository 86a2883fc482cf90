"""The sagemaker launcher against moto's server (S3, SageMaker, CloudWatch Logs) and, for the job states
moto lacks (InProgress, Stopping/Stopped, Failed, spot interruption), botocore's Stubber on
DescribeTrainingJob/StopTrainingJob only. Nothing here trains: test_sagemaker_job.py does."""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from loraops.data.params import RemoteParams
from loraops.errors import ConfigError, StageError
from loraops.files import file_md5
from loraops.train.cost import sagemaker_cost
from loraops.train.job import TrainJob
from loraops.train.params import EmulateParams, SageMakerParams, TrainParams
from loraops.train.sagemaker import (
    LOG_GROUP,
    AwsClients,
    S3Uri,
    SageMakerLauncher,
    dvc_object_uri,
    job_name,
    training_job_request,
)
from loraops.train.sagemaker_emulator import EmulatedSageMaker
from loraops.workspace import Workspace

pytest_plugins = ["fixtures_moto"]
ROOT = Path(__file__).resolve().parents[1]
ROLE = "arn:aws:iam::123456789012:role/loraops-sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/loraops-trainer:0.1.0"
BUCKET = "loraops-sm-test"


def sm_params(endpoint: str | None = None, **changes: Any) -> SageMakerParams:
    values: dict[str, Any] = {
        "role_arn": ROLE,
        "image_uri": IMAGE,
        "s3_prefix": f"s3://{BUCKET}/loraops",
        "endpoint_url": endpoint,
        "instance_type": "ml.g5.2xlarge",
        "poll_initial_s": 1.0,
        "poll_max_s": 8.0,
        "stop_timeout_s": 30.0,
    }
    values.update(changes)
    return SageMakerParams.model_validate(values)


def make_job(tmp_path: Path, base_model: str | None = None) -> TrainJob:
    data = tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    rows = [{"instruction": f"say {i}", "input": "", "output": str(i)} for i in range(20)]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:16]))
    (data / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[16:]))
    (data / "replay.jsonl").write_text(json.dumps(rows[0]) + "\n")
    if base_model is None:
        model = tmp_path / "models" / "loraops-tiny-0123456789ab"
        model.mkdir(parents=True, exist_ok=True)
        (model / "config.json").write_text("{}")
        (model / "model.safetensors").write_bytes(b"weights")
        base_model = str(model)
    params = TrainParams(lora_r=8, num_epochs=1, replay_fraction=0.5)
    return TrainJob.build(
        ROOT,
        params,
        base_model=base_model,
        data_format="alpaca",
        train_file=data / "train.jsonl",
        val_file=data / "val.jsonl",
        replay_file=data / "replay.jsonl",
    )


def push_to_dvc_remote(s3: Any, remote: str, *files: Path) -> None:
    """What `dvc push` leaves in an S3 remote: each file under files/md5/<2>/<30>."""
    for path in files:
        uri = dvc_object_uri(S3Uri.parse(remote), file_md5(path))
        s3.put_object(Bucket=uri.bucket, Key=uri.key, Body=path.read_bytes())


@pytest.fixture
def clients(moto_endpoint: str, aws_env: None) -> AwsClients:
    made = AwsClients.create("us-east-1", moto_endpoint)
    made.s3.create_bucket(Bucket=BUCKET)
    return made


def test_request_is_built_field_by_field(tmp_path: Path) -> None:
    job = make_job(tmp_path)
    params = sm_params(instance_count=2, max_run_s=3600, environment={"HF_TOKEN": "x"}, tags={"team": "ml"})
    request = training_job_request(
        name="loraops-x-1",
        params=params,
        job=job,
        channels={"config": "s3://b/cfg/", "train": "s3://b/dvc/files/md5/ab/cd"},
        output_uri="s3://b/jobs",
        checkpoint_uri="s3://b/checkpoints/fp",
        environment={"HF_HUB_OFFLINE": "1"},
    )
    assert request["TrainingJobName"] == "loraops-x-1" and request["RoleArn"] == ROLE
    assert request["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert request["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert request["CheckpointConfig"] == {
        "S3Uri": "s3://b/checkpoints/fp",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert request["ResourceConfig"] == {
        "InstanceType": "ml.g5.2xlarge",
        "InstanceCount": 2,
        "VolumeSizeInGB": 100,
    }
    assert request["OutputDataConfig"] == {"S3OutputPath": "s3://b/jobs"}
    channels = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]
    }
    assert channels == {"config": "s3://b/cfg/", "train": "s3://b/dvc/files/md5/ab/cd"}
    assert request["Environment"] == {"HF_HUB_OFFLINE": "1", "HF_TOKEN": "x"}
    hp = request["HyperParameters"]
    assert hp["loraops_fingerprint"] == job.fingerprint() and hp["lora_r"] == "8" and hp["adapter"] == "lora"
    assert all(isinstance(v, str) for v in hp.values())  # SageMaker hyperparameters are strings
    tags = {t["Key"]: t["Value"] for t in request["Tags"]}
    assert tags["team"] == "ml" and tags["loraops:fingerprint"] == job.fingerprint()
    on_demand = training_job_request(
        name="n",
        params=sm_params(spot=False),
        job=job,
        channels={},
        output_uri="s3://b/j",
        checkpoint_uri="s3://b/c",
    )
    assert on_demand["EnableManagedSpotTraining"] is False
    assert "MaxWaitTimeInSeconds" not in on_demand["StoppingCondition"]


def test_job_names_follow_sagemakers_rules() -> None:
    name = job_name(
        "support triage/v2 with a very long name indeed", "0123456789abcdef", datetime(2026, 1, 2, 3, 4, 5)
    )
    assert len(name) <= 63 and all(c.isalnum() or c == "-" for c in name)
    assert name.endswith("-01234567-20260102-030405")


def test_params_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match="not an IAM role ARN"):
        sm_params(role_arn="loraops-role")
    with pytest.raises(ValueError, match="MaxWaitTimeInSeconds >= MaxRuntimeInSeconds"):
        sm_params(max_run_s=3600, max_wait_s=60)
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        sm_params(s3_prefix="bucket/prefix")


@pytest.mark.e2e  # moto's server on loopback
def test_create_training_job_in_moto_records_the_request(tmp_path: Path, clients: AwsClients) -> None:
    job = make_job(tmp_path)
    remote = RemoteParams(name="s3", url=f"s3://{BUCKET}/dvc", endpoint_url=clients.s3.meta.endpoint_url)
    push_to_dvc_remote(clients.s3, remote.url, job.train_file, job.val_file)  # type: ignore[arg-type]
    launcher = SageMakerLauncher(
        sm_params(clients.s3.meta.endpoint_url), Workspace(tmp_path), data_remote=remote, clients=clients
    )
    request = launcher.prepare_request(job, "loraops-moto-1")
    clients.sagemaker.create_training_job(**request)  # botocore validates the request against the API model
    desc = clients.sagemaker.describe_training_job(TrainingJobName="loraops-moto-1")
    assert desc["RoleArn"] == ROLE and desc["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert desc["EnableManagedSpotTraining"] is True
    assert desc["CheckpointConfig"]["S3Uri"] == f"s3://{BUCKET}/loraops/checkpoints/{job.fingerprint()}"
    assert (
        desc["StoppingCondition"]["MaxWaitTimeInSeconds"]
        == 2 * desc["StoppingCondition"]["MaxRuntimeInSeconds"]
    )
    assert desc["ResourceConfig"]["InstanceType"] == "ml.g5.2xlarge"
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in desc["InputDataConfig"]}
    train_md5 = file_md5(job.train_file)
    assert channels["train"] == f"s3://{BUCKET}/dvc/files/md5/{train_md5[:2]}/{train_md5[2:]}"
    assert channels["config"] == f"s3://{BUCKET}/loraops/jobs/loraops-moto-1/input/config/"
    assert channels["base_model"] == f"s3://{BUCKET}/loraops/base-models/loraops-tiny-0123456789ab/"
    spec = json.loads(
        clients.s3.get_object(Bucket=BUCKET, Key="loraops/jobs/loraops-moto-1/input/config/job.json")[
            "Body"
        ].read()
    )
    assert spec["fingerprint"] == job.fingerprint() and spec["files"]["replay"] == "replay.jsonl"
    assert spec["params"] == {"lora_r": 8, "num_epochs": 1, "replay_fraction": 0.5}  # what params.yaml set
    marker = "loraops/base-models/loraops-tiny-0123456789ab/.loraops-complete"
    uploaded = clients.s3.head_object(Bucket=BUCKET, Key=marker)["LastModified"]
    launcher.prepare_request(job, "loraops-moto-2")  # the base model is uploaded once
    assert clients.s3.head_object(Bucket=BUCKET, Key=marker)["LastModified"] == uploaded


@pytest.mark.e2e  # moto's server on loopback
def test_the_data_must_be_in_the_dvc_s3_remote(tmp_path: Path, clients: AwsClients) -> None:
    job = make_job(tmp_path)
    endpoint = clients.s3.meta.endpoint_url
    local = SageMakerLauncher(
        sm_params(endpoint), Workspace(tmp_path), data_remote=RemoteParams(), clients=clients
    )
    with pytest.raises(ConfigError, match="reads the prepared data from the DVC remote in S3"):
        local.prepare_request(job, "j1")
    remote = RemoteParams(url=f"s3://{BUCKET}/empty", endpoint_url=endpoint)
    s3_launcher = SageMakerLauncher(
        sm_params(endpoint), Workspace(tmp_path), data_remote=remote, clients=clients
    )
    with pytest.raises(StageError, match=r"is not in the DVC remote .*loraops data version"):
        s3_launcher.prepare_request(job, "j2")


def _description(status: str, secondary: str, transitions: list[str], **extra: Any) -> dict[str, Any]:
    now = datetime(2026, 11, 27, tzinfo=UTC)
    return {
        "TrainingJobName": "job-1",
        "TrainingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/job-1",
        "ModelArtifacts": {"S3ModelArtifacts": f"s3://{BUCKET}/loraops/jobs/job-1/output/model.tar.gz"},
        "TrainingJobStatus": status,
        "SecondaryStatus": secondary,
        "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File"},
        "ResourceConfig": {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 100},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "CreationTime": now,
        "SecondaryStatusTransitions": [
            {"Status": s, "StartTime": now, "StatusMessage": f"{s} message"} for s in transitions
        ],
        **extra,
    }


def _stubbed(clients: AwsClients) -> tuple[Any, Stubber]:
    sagemaker = boto3.client("sagemaker", region_name="us-east-1")
    return sagemaker, Stubber(sagemaker)


@pytest.mark.e2e  # moto's server on loopback
def test_wait_streams_the_log_backs_off_and_reports_a_failure_in_one_line(
    tmp_path: Path, clients: AwsClients
) -> None:
    sagemaker, stub = _stubbed(clients)
    with contextlib.suppress(clients.logs.exceptions.ResourceAlreadyExistsException):  # moto is shared
        clients.logs.create_log_group(logGroupName=LOG_GROUP)
    clients.logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName="job-1/algo-1-1")
    clients.logs.put_log_events(
        logGroupName=LOG_GROUP,
        logStreamName="job-1/algo-1-1",
        logEvents=[{"timestamp": int(time.time() * 1000), "message": "{'loss': '2.5', 'epoch': '0.1'}"}],
    )
    job = {"TrainingJobName": "job-1"}
    stub.add_response("describe_training_job", _description("InProgress", "Starting", ["Starting"]), job)
    stub.add_response("describe_training_job", _description("InProgress", "Starting", ["Starting"]), job)
    stub.add_response("describe_training_job", _description("InProgress", "Starting", ["Starting"]), job)
    stub.add_response(
        "describe_training_job", _description("InProgress", "Training", ["Starting", "Training"]), job
    )
    failed = _description(
        "Failed",
        "Failed",
        ["Starting", "Training", "Failed"],
        FailureReason="AlgorithmError: CUDA out of memory.\nTried to allocate 2.00 GiB",
    )
    stub.add_response("describe_training_job", failed, job)
    delays: list[float] = []
    launcher = SageMakerLauncher(
        sm_params(), Workspace(tmp_path), clients=clients, jobs=sagemaker, sleep=delays.append
    )
    lines: list[str] = []
    with stub:
        desc = launcher.wait("job-1", lines.append)
    stub.assert_no_pending_responses()
    assert desc["TrainingJobStatus"] == "Failed"
    assert delays == [1.0, 2.0, 4.0, 1.0]  # doubling, back to the first delay after a status change
    assert "{'loss': '2.5', 'epoch': '0.1'}" in lines
    assert any("Training: Training message" in line for line in lines)
    with pytest.raises(StageError) as err:
        launcher.check_completed(desc)
    message = str(err.value)
    assert (
        "\n" not in message
        and "job job-1 failed: AlgorithmError: CUDA out of memory. Tried to allocate" in message
    )


@pytest.mark.e2e  # moto's server on loopback
def test_a_cancelled_wait_stops_the_job_and_waits_until_it_stopped(
    tmp_path: Path, clients: AwsClients
) -> None:
    sagemaker, stub = _stubbed(clients)
    job = {"TrainingJobName": "job-1"}
    stub.add_response("describe_training_job", _description("InProgress", "Training", ["Training"]), job)
    stub.add_response("stop_training_job", {}, job)
    stub.add_response(
        "describe_training_job", _description("Stopping", "Stopping", ["Training", "Stopping"]), job
    )
    stub.add_response(
        "describe_training_job", _description("Stopped", "Stopped", ["Training", "Stopped"]), job
    )
    calls = 0

    def sleep(_: float) -> None:  # the flow run is cancelled while the launcher waits
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyboardInterrupt

    launcher = SageMakerLauncher(
        sm_params(), Workspace(tmp_path), clients=clients, jobs=sagemaker, sleep=sleep
    )
    lines: list[str] = []
    with stub, pytest.raises(KeyboardInterrupt):
        launcher.wait("job-1", lines.append)
    stub.assert_no_pending_responses()
    assert any("stopping SageMaker job job-1" in line for line in lines)
    assert lines[-1] == "[loraops] SageMaker job job-1 is Stopped"


@pytest.mark.e2e  # moto's server on loopback
def test_transient_poll_errors_are_retried_without_stopping_the_job(
    tmp_path: Path, clients: AwsClients
) -> None:
    sagemaker, stub = _stubbed(clients)
    job = {"TrainingJobName": "job-1"}
    stub.add_client_error(
        "describe_training_job", service_error_code="ThrottlingException", http_status_code=400
    )
    stub.add_response("describe_training_job", _description("Completed", "Completed", ["Completed"]), job)
    launcher = SageMakerLauncher(
        sm_params(), Workspace(tmp_path), clients=clients, jobs=sagemaker, sleep=lambda _: None
    )
    lines: list[str] = []
    with stub:
        assert launcher.wait("job-1", lines.append)["TrainingJobStatus"] == "Completed"
    stub.assert_no_pending_responses()  # no StopTrainingJob was called
    assert any("polling job-1 failed" in line and "ThrottlingException" in line for line in lines)


@pytest.mark.e2e  # moto's server on loopback
def test_an_error_of_the_flow_itself_stops_the_job_too(tmp_path: Path, clients: AwsClients) -> None:
    sagemaker, stub = _stubbed(clients)
    job = {"TrainingJobName": "job-1"}
    stub.add_response("describe_training_job", _description("InProgress", "Training", ["Training"]), job)
    stub.add_response("stop_training_job", {}, job)
    stub.add_response(
        "describe_training_job", _description("Stopped", "Stopped", ["Training", "Stopped"]), job
    )

    def on_line(line: str) -> None:
        if "Training message" in line:
            raise StageError("MLflow went away")  # the flow cannot record the result any more
        lines.append(line)

    lines: list[str] = []
    launcher = SageMakerLauncher(
        sm_params(), Workspace(tmp_path), clients=clients, jobs=sagemaker, sleep=lambda _: None
    )
    with stub, pytest.raises(StageError, match="MLflow went away"):
        launcher.wait("job-1", on_line)
    stub.assert_no_pending_responses()
    assert lines[-1] == "[loraops] SageMaker job job-1 is Stopped"


def test_spot_cost_uses_billable_time_and_reports_the_saving() -> None:
    cost = sagemaker_cost(
        billable_s=900, training_s=3000, instance_type="ml.g5.2xlarge", instances=2, usd_per_hour=1.5
    )
    assert cost.usd == pytest.approx(900 * 2 / 3600 * 1.5)
    assert cost.on_demand_usd == pytest.approx(3000 * 2 / 3600 * 1.5)
    assert cost.spot_saving == pytest.approx(0.7)
    assert "70% saved by spot" in cost.summary()


@pytest.mark.e2e  # moto's server on loopback
def test_a_pickled_adapter_from_the_job_is_refused(tmp_path: Path, clients: AwsClients) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("adapter_config.json", b"{}"), ("adapter_model.bin", b"\x80\x04pickle")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    clients.s3.put_object(Bucket=BUCKET, Key="loraops/jobs/job-1/output/model.tar.gz", Body=buf.getvalue())
    launcher = SageMakerLauncher(
        sm_params(clients.s3.meta.endpoint_url), Workspace(tmp_path), clients=clients
    )
    desc = _description("Completed", "Completed", ["Completed"])
    with pytest.raises(StageError, match="pickled weights, which can run code when loaded"):
        launcher._fetch_adapter(desc, tmp_path / "run")


def test_the_emulator_never_stands_in_for_real_aws(tmp_path: Path) -> None:
    params = sm_params(None, emulate=EmulateParams())
    with pytest.raises(ConfigError, match="unset \\(real AWS\\)"):
        EmulatedSageMaker(None, work_root=tmp_path, params=params)
    with pytest.raises(ConfigError, match=r"https://sagemaker\.us-east-1\.amazonaws\.com"):
        EmulatedSageMaker(
            None,
            work_root=tmp_path,
            params=sm_params("https://sagemaker.us-east-1.amazonaws.com", emulate=EmulateParams()),
        )
