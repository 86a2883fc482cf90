"""params.yaml `stack:` section: where the local services listen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
    sync_url: str | None = Field(
        None,
        description="Use the serving stack (vLLM and its alias sync hook) behind this hook URL instead of "
        "starting one: the stack of another workspace on the same base model, which then serves this "
        "workspace's model too. Needs stack.tracking_uri (the hook follows that MLflow) and "
        "serving.admin_token_file / serving.api_key_file pointing at that stack's files.",
    )

    @model_validator(mode="after")
    def _shared_stack_needs_its_registry(self) -> StackParams:
        if self.sync_url is not None and self.tracking_uri is None:
            raise ValueError(
                "stack.sync_url uses another stack's sync hook, which serves the models of its own MLflow "
                "server: set stack.tracking_uri to that server too"
            )
        return self
