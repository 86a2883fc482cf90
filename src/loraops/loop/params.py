"""params.yaml `schedule:` section: the retrain deployment, its cron schedule, the worker's work pool and
what a second trigger does while a retrain of the same model runs."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")


class ScheduleParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cron: str | None = Field(
        "0 3 * * *",
        description="When the retrain deployment runs (cron, 5 fields). null: no schedule, the deployment "
        "runs only when triggered (Prefect UI 'Run', `prefect deployment run`).",
    )
    timezone: str = Field("UTC", description="Time zone of the cron expression (IANA name).")
    deployment: str | None = Field(
        None,
        description="Deployment name: the flow's is `retrain/<this>`. Unset: the registered model's name, so "
        "each task on a stack has its own deployment and schedule.",
    )
    work_pool: str = Field("loraops", description="Process work pool the local worker polls.")
    on_overlap: Literal["wait", "skip"] = Field(
        "skip",
        description="A trigger while a retrain of the same model runs: wait for it (up to wait_timeout_s) "
        "or end as skipped (when the slot stays taken for 30 s). Enforced by a Prefect global concurrency "
        "limit per model, retrain-<model>.",
    )
    wait_timeout_s: float = Field(
        6 * 3600.0, gt=0, description="With on_overlap: wait, how long a run waits before it gives up."
    )
    retries: int = Field(
        2, ge=0, le=10, description="Retries of a step after a transient error (service unreachable)."
    )
    retry_delay_s: float = Field(
        10.0, ge=0, description="Delay before the first retry; doubled for each further one."
    )

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from datetime import UTC, datetime

        from cronsim import CronSim, CronSimError

        try:
            CronSim(value, datetime.now(UTC))
        except CronSimError as exc:
            raise ValueError(f"not a cron expression ({exc}); e.g. '0 3 * * *' for 03:00 daily") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone; use an IANA name such as UTC or Europe/Berlin") from None
        return value

    @field_validator("deployment", "work_pool")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError("letters, digits, '.', '_' and '-' only")
        return value

    def retry_delays(self) -> list[float]:
        """Seconds before each retry: retry_delay_s, then doubled (exponential backoff)."""
        return [self.retry_delay_s * 2**i for i in range(self.retries)]
