"""params.yaml `stack:` section: where the local services listen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StackParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Interface every local service binds to.")
    mlflow_port: int = Field(5000, ge=1, le=65535, description="MLflow tracking server + UI.")
    prefect_port: int = Field(4200, ge=1, le=65535, description="Prefect API server + UI.")
    sync_port: int = Field(8765, ge=1, le=65535, description="Alias sync hook (MLflow webhook target).")
    tracking_uri: str | None = Field(
        None, description="Use this MLflow server instead of starting one (e.g. a shared team server)."
    )
    prefect_api_url: str | None = Field(None, description="Use this Prefect API instead of starting one.")
