"""`loraops train --launcher sagemaker` against moto's server, with one simulated spot interruption.

Real: the CLI, the Prefect flow, DVC pushing the prepared data to the S3 remote, the CreateTrainingJob
request (recorded by moto), CloudWatch Logs, the in-job entry point training the tiny model with
Axolotl in a directory laid out like /opt/ml, checkpoints synced to S3 and restored after the
interruption, model.tar.gz, MLflow registration. Played: what SageMaker itself does between those
(the emulator in loraops.train.sagemaker_emulator), since moto runs no containers.
"""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from mlflow import MlflowClient

from conftest import make_workspace, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.base_model]
pytest_plugins = ["fixtures_moto"]
BUCKET = "loraops-e2e"


def test_train_on_sagemaker_resumes_after_a_spot_interruption_and_registers_cost_and_lineage(
    tmp_path: Path, moto_endpoint: str, aws_env: None
) -> None:
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    ws = make_workspace(
        tmp_path / "ws",
        overrides={
            "data": {"remote": {"name": "s3", "url": f"s3://{BUCKET}/dvc", "endpoint_url": moto_endpoint}},
            "train": {
                "launcher": "local",  # the command line chooses sagemaker
                "overrides": {
                    "max_steps": 60,
                    "save_strategy": "steps",
                    "save_steps": 20,
                    "logging_steps": 5,
                    "eval_strategy": "no",
                },
                "sagemaker": {
                    "role_arn": "arn:aws:iam::123456789012:role/loraops-sagemaker",
                    "image_uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/loraops-trainer:0.1.0",
                    "s3_prefix": f"s3://{BUCKET}/loraops",
                    "endpoint_url": moto_endpoint,
                    "instance_type": "ml.g5.2xlarge",
                    "poll_initial_s": 1,
                    "poll_max_s": 4,
                    "emulate": {"interrupt_after_checkpoints": 1},
                },
            },
        },
    )
    sagemaker = boto3.client("sagemaker", endpoint_url=moto_endpoint, region_name="us-east-1")
    # moto's server is the session's: other tests' jobs may be there already
    before = {j["TrainingJobName"] for j in sagemaker.list_training_jobs()["TrainingJobSummaries"]}
    try:
        result = run_cli(ws, "train", "--launcher", "sagemaker", timeout=1500)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-6000:]

        # the job spec, the streamed log, the interruption and the resume
        assert "CreateTrainingJob request:" in output and '"EnableManagedSpotTraining": true' in output
        assert " on algo-1 of 1 host(s), python" in output  # the container's own line, read from CloudWatch
        assert "[job] [20" in output  # Axolotl's log lines, streamed into the flow log
        assert "Interrupted: The spot instance was reclaimed" in output
        assert "resuming from checkpoint-20 (step 20 of 60)" in output
        assert "resumed   : from step 20" in output
        assert "saved by spot" in output
        assert "Traceback" not in output

        jobs = {j["TrainingJobName"] for j in sagemaker.list_training_jobs()["TrainingJobSummaries"]} - before
        assert len(jobs) == 1, jobs  # one job, resumed after the interruption, not a second one
        job = sagemaker.describe_training_job(TrainingJobName=jobs.pop())
        assert job["EnableManagedSpotTraining"] is True
        channels = {
            c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]
        }
        assert channels["train"].startswith(f"s3://{BUCKET}/dvc/files/md5/")  # read from the DVC remote
        assert set(channels) == {"config", "train", "val", "base_model"}
        output_key = f"loraops/jobs/{job['TrainingJobName']}/output/model.tar.gz"
        assert s3.head_object(Bucket=BUCKET, Key=output_key)["ContentLength"] > 0
        checkpoint_prefix = job["CheckpointConfig"]["S3Uri"].removeprefix(f"s3://{BUCKET}/")
        assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=checkpoint_prefix)  # cleared

        mlflow_url = f"http://127.0.0.1:{_param(ws, 'stack', 'mlflow_port')}"
        client = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
        version = client.get_model_version("support-triage", "1")
        assert version.tags["train.launcher"] == "sagemaker"
        assert version.tags["train.job_name"] == job["TrainingJobName"]
        assert version.tags["train.resumed_from_step"] == "20"
        for tag in ("data_version", "git_commit", "base_model", "code_commit"):
            assert version.tags.get(tag), tag
        run = client.get_run(version.run_id)
        metrics = run.data.metrics
        # the cost comes from the job's billing fields (billable vs training seconds), as the SageMaker
        # console computes the spot saving
        billable, training = metrics["train.billable_s"], metrics["train.training_s"]
        assert 0 < billable < training  # managed spot billed fewer seconds than the job trained
        assert metrics["cost.spot_saving"] == pytest.approx(1 - billable / training)
        assert metrics["cost.usd"] == pytest.approx(metrics["cost.on_demand_usd"] * billable / training)
        assert len(client.get_metric_history(version.run_id, "train.loss")) >= 8  # streamed per step
        adapter_files = {a.path for a in client.list_artifacts(version.run_id, "adapter")}
        assert adapter_files >= {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"}
    finally:
        run_cli(ws, "down", timeout=120)


def _param(ws: Path, section: str, key: str) -> int:
    import yaml

    return int(yaml.safe_load((ws / "params.yaml").read_text())[section][key])
