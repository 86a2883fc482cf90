"""params.yaml `registry:` section: where runs are logged and which registered model and alias are served."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator


class RegistryParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(
        default="support-triage",
        min_length=1,
        description="Registered model in MLflow; every adapter becomes a version of it. Also the name "
        "vLLM serves the champion under.",
    )
    champion_alias: str = Field(
        default="champion",
        min_length=1,
        max_length=255,
        pattern=r"^[\w-]+$",
        description="Alias of the version that is served. Moving it (MLflow UI or the gate) redeploys.",
    )
    challenger_alias: str = Field(
        default="challenger",
        min_length=1,
        max_length=255,
        pattern=r"^[\w-]+$",
        description="Alias a passing version gets when gate.auto_promote is false (for a person to promote).",
    )
    experiment: str = Field(
        default="loraops", min_length=1, description="MLflow experiment that runs are logged to."
    )

    @field_validator("model_name")
    @classmethod
    def _servable(cls, value: str) -> str:
        from loraops.errors import ConfigError
        from loraops.serving.names import check_model_name

        try:
            return check_model_name(value)
        except ConfigError as exc:
            raise ValueError(f"{exc.message}; {exc.hint}") from None

    @field_validator("champion_alias", "challenger_alias")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        # MLflow reserves these for its own version references.
        if value.lower() == "latest" or re.fullmatch(r"[vV]\d+", value):
            raise ValueError(f"'{value}' is reserved by MLflow; choose another alias such as 'champion'")
        return value
