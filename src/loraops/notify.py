"""Tell people about unattended runs: a JSON POST to a webhook URL from params.yaml (`notify:`).

Nobody watches a scheduled retrain, so a run that fails or that the gate refuses must reach someone.
The body is plain JSON with a ``text`` line, which chat tools' incoming webhooks (Slack, Mattermost,
Teams via a workflow) display as is. Sending never fails the run: a notification that cannot be
delivered is retried a few times, then reported in the flow log.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Event = Literal["failed", "refused", "promoted", "skipped"]


def _default_events() -> list[Event]:
    return ["failed", "refused"]


class NotifyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhook_url: str | None = Field(
        default=None,
        description="POST a JSON notice here (chat incoming webhook, alerting endpoint). Unset: no notices.",
    )
    events: list[Event] = Field(
        default_factory=_default_events,
        description="Which outcomes of a retrain are sent: failed, refused, promoted, skipped.",
    )
    timeout_s: float = Field(default=10.0, gt=0, description="Per attempt.")
    attempts: int = Field(default=3, ge=1, le=10, description="Tries before giving up (1 s, 2 s, ... apart).")


@dataclass(frozen=True)
class Notice:
    """One outcome of one run, as sent."""

    event: Event
    model: str
    message: str
    version: str | None = None
    flow_run_url: str | None = None
    run_url: str | None = None
    at: str = ""

    def body(self) -> dict[str, object]:
        """The JSON body: every field, plus ``text`` for chat tools."""
        at = self.at or datetime.now(UTC).isoformat(timespec="seconds")
        link = f" {self.flow_run_url}" if self.flow_run_url else ""
        version = f" v{self.version}" if self.version else ""
        text = f"loraops {self.model}{version}: {self.event}: {self.message}{link}"
        return {**asdict(self), "at": at, "text": text}


def send(url: str, notice: Notice, *, timeout_s: float = 10.0, attempts: int = 3) -> str | None:
    """POST ``notice`` to ``url``; None when delivered (2xx), else why not. Never raises."""
    data = json.dumps(notice.body()).encode()
    problem = "not tried"
    for attempt in range(attempts):
        if attempt:
            time.sleep(2 ** (attempt - 1))
        req = urllib.request.Request(  # noqa: S310 (a URL the user configured)
            url, data=data, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310
                if 200 <= resp.status < 300:
                    return None
                problem = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code}"
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                break  # the receiver refuses this notice: trying again changes nothing
        except (urllib.error.URLError, OSError) as exc:
            problem = str(getattr(exc, "reason", exc))
    return f"notice to {url} not delivered after {attempt + 1} attempt(s): {problem}"


def notify(params: NotifyParams, notice: Notice) -> str | None:
    """Send ``notice`` when ``params`` asks for its event; None when sent or not asked for, else why not."""
    if params.webhook_url is None or notice.event not in params.events:
        return None
    return send(params.webhook_url, notice, timeout_s=params.timeout_s, attempts=params.attempts)
