"""What loraops reads from the Prefect API: the retrain runs of a workspace (last one, next scheduled) and
the retrain deployments of the whole stack (one per registered model)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from typing import Any

from loraops.errors import StackError
from loraops.services import http_ok
from loraops.status import DeploymentRow, RunRow

RETRAIN_FLOW = "retrain"


@contextmanager
def prefect_client(api_url: str) -> Iterator[Any]:
    """A synchronous Prefect client of ``api_url``; StackError at once when the API does not answer
    (the client itself would retry for a long while)."""
    if not http_ok(f"{api_url.rstrip('/')}/health", timeout=3):
        raise StackError(f"the Prefect API at {api_url} does not answer", hint="`loraops up` starts it")
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        yield client


def same_workspace(given: Any, workspace: str) -> bool:
    """Whether a run's or a deployment's ``workspace`` parameter names ``workspace``."""
    return given is not None and os.path.realpath(str(given)) == os.path.realpath(workspace)


def _of_workspace(run: Any, workspace: str) -> bool:
    given = (run.parameters or {}).get("workspace")
    return given is None or same_workspace(given, workspace)


def _scheduled_runs(client: Any, limit: int) -> list[Any]:
    """The retrain flow's scheduled runs, soonest first."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    runs: list[Any] = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[RETRAIN_FLOW])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
        ),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        limit=limit,
    )
    return runs


def retrain_runs(api_url: str, ui_url: str, workspace: str) -> tuple[RunRow | None, str | None]:
    """The workspace's last retrain run that started, and when the next scheduled one is due."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    flows = FlowFilter(name=FlowFilterName(any_=[RETRAIN_FLOW]))
    with prefect_client(api_url) as client:
        started = client.read_flow_runs(
            flow_filter=flows,
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(not_any_=[StateType.SCHEDULED, StateType.PENDING])
                )
            ),
            sort=FlowRunSort.START_TIME_DESC,
            limit=50,
        )
        scheduled = _scheduled_runs(client, limit=50)
    last = next((r for r in started if _of_workspace(r, workspace)), None)
    due = next((r for r in scheduled if _of_workspace(r, workspace)), None)
    row = None
    if last is not None:
        when = last.start_time or last.expected_start_time
        row = RunRow(
            name=last.name,
            state=last.state.name if last.state else "unknown",
            url=f"{ui_url.rstrip('/')}/runs/flow-run/{last.id}",
            when=when.isoformat(timespec="seconds") if when else "not started",
        )
    nxt = None
    if due is not None and due.expected_start_time is not None:
        nxt = f"{due.expected_start_time.isoformat(timespec='minutes')} ({due.name})"
    return row, nxt


def retrain_deployments(api_url: str) -> list[DeploymentRow]:
    """Every deployment of the retrain flow on this Prefect server, by name, with its next scheduled run."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    rows = []
    with prefect_client(api_url) as client:
        deployments = client.read_deployments(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[RETRAIN_FLOW]))
        )
        first_due: dict[Any, Any] = {}
        for run in _scheduled_runs(client, limit=200):  # soonest first: keep each deployment's first
            first_due.setdefault(run.deployment_id, run)
        for deployment in deployments:
            due = first_due.get(deployment.id)
            active = [
                s.schedule
                for s in deployment.schedules or []
                if getattr(s.schedule, "cron", None) and s.active
            ]
            crons = [f"cron {c.cron!r} ({c.timezone or 'UTC'})" for c in active]
            models = [t for t in deployment.tags or [] if t != "loraops"]
            when = due.expected_start_time if due is not None else None
            rows.append(
                DeploymentRow(
                    name=f"{RETRAIN_FLOW}/{deployment.name}",
                    model=models[0] if models else "?",
                    workspace=str((deployment.parameters or {}).get("workspace", "?")),
                    schedule=", ".join(crons) or "when triggered",
                    next_run=when.astimezone(UTC).isoformat(timespec="minutes") if when else None,
                    crons=tuple(c.cron for c in active),
                )
            )
    return sorted(rows, key=lambda r: r.name)
