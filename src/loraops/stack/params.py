"""params.yaml `stack:` section: where the local services listen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from loraops.stack.stores import (
    check_artifacts_destination,
    check_endpoint_url,
    check_mlflow_backend_store_uri,
    check_prefect_database_url,
)


class StackParams(BaseModel):
    """Where the local services listen, and which stores MLflow and Prefect keep their state in."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Interface every local service binds to.")
    mlflow_port: int = Field(5000, ge=1, le=65535, description="MLflow tracking server + UI.")
    prefect_port: int = Field(4200, ge=1, le=65535, description="Prefect API server + UI.")
    sync_port: int = Field(8765, ge=1, le=65535, description="Alias sync hook (MLflow webhook target).")
    worker_port: int = Field(
        8766, ge=1, le=65535, description="Health check of the Prefect worker that runs scheduled retrains."
    )
    tracking_uri: str | None = Field(
        None, description="Use this MLflow server instead of starting one (e.g. a shared team server)."
    )
    prefect_api_url: str | None = Field(None, description="Use this Prefect API instead of starting one.")
    sync_url: str | None = Field(
        None,
        description="Use the serving stack (vLLM and its alias sync hook) behind this hook URL instead of "
        "starting one: the stack of another workspace on the same base model, which then serves this "
        "workspace's model too. Needs stack.tracking_uri (the hook follows that MLflow) and "
        "serving.admin_token_file / serving.api_key_file pointing at that stack's files.",
    )
    mlflow_backend_store_uri: str | None = Field(
        None,
        description="The database of the MLflow server loraops starts (runs, registry, aliases, webhooks), "
        "e.g. postgresql+psycopg://mlflow@db.internal:5432/mlflow (password in ~/.pgpass). Unset: SQLite "
        "in .loraops/mlflow/mlflow.db.",
    )
    mlflow_artifacts_destination: str | None = Field(
        None,
        description="Where that MLflow server stores artifacts (adapters, evaluations), e.g. "
        "s3://bucket/mlflow. The server serves them (--serve-artifacts): clients need no S3 credentials, "
        "the server takes them from its environment. Unset: .loraops/mlflow/artifacts.",
    )
    mlflow_s3_endpoint_url: str | None = Field(
        None,
        description="S3-compatible endpoint of stack.mlflow_artifacts_destination (MinIO, Ceph, ...), "
        "given to the server as MLFLOW_S3_ENDPOINT_URL. Unset: AWS S3.",
    )
    prefect_database_url: str | None = Field(
        None,
        description="The database of the Prefect server loraops starts (flow runs, schedules, work pools), "
        "e.g. postgresql+asyncpg://prefect@db.internal:5432/prefect (password in ~/.pgpass). Unset: "
        "SQLite in .loraops/prefect.",
    )

    @field_validator("mlflow_backend_store_uri")
    @classmethod
    def _mlflow_db(cls, url: str | None) -> str | None:
        return None if url is None else check_mlflow_backend_store_uri(url)

    @field_validator("mlflow_artifacts_destination")
    @classmethod
    def _mlflow_artifacts(cls, url: str | None) -> str | None:
        return None if url is None else check_artifacts_destination(url)

    @field_validator("mlflow_s3_endpoint_url")
    @classmethod
    def _s3_endpoint(cls, url: str | None) -> str | None:
        return None if url is None else check_endpoint_url(url)

    @field_validator("prefect_database_url")
    @classmethod
    def _prefect_db(cls, url: str | None) -> str | None:
        return None if url is None else check_prefect_database_url(url)

    @model_validator(mode="after")
    def _shared_stack_needs_its_registry(self) -> StackParams:
        if self.sync_url is not None and self.tracking_uri is None:
            raise ValueError(
                "stack.sync_url uses another stack's sync hook, which serves the models of its own MLflow "
                "server: set stack.tracking_uri to that server too"
            )
        return self

    @model_validator(mode="after")
    def _stores_belong_to_servers_we_start(self) -> StackParams:
        mlflow_stores = (self.mlflow_backend_store_uri, self.mlflow_artifacts_destination)
        if self.tracking_uri is not None and any(v is not None for v in mlflow_stores):
            raise ValueError(
                "stack.mlflow_backend_store_uri / mlflow_artifacts_destination configure the MLflow server "
                "loraops starts, but stack.tracking_uri says to use another one: set them on that server "
                "instead, or unset stack.tracking_uri"
            )
        if self.prefect_api_url is not None and self.prefect_database_url is not None:
            raise ValueError(
                "stack.prefect_database_url configures the Prefect server loraops starts, but "
                "stack.prefect_api_url says to use another one: set it on that server instead, or unset "
                "stack.prefect_api_url"
            )
        return self
