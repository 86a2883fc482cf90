"""Unattended retraining, the Prefect way: a process work pool, one worker that polls it (a service of the
stack) and one `retrain/<model>` deployment per registered model, with its cron schedule from that
workspace's params.yaml.

Scheduled runs, "Run" in the Prefect UI and `prefect deployment run retrain/<model>` all create a flow
run of the deployment; the worker picks it up and runs flows/retrain.py in a subprocess, in this checkout,
for the deployment's workspace. Workspaces on another workspace's stack (`stack.sync_url`) register their
deployment in the same pool and start no worker of their own.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loraops.envs import control_env, repo_root
from loraops.errors import StackError
from loraops.services import ServiceManager, ServiceSpec, http_url

if TYPE_CHECKING:
    from loraops.config import Params
    from loraops.stack.local import StackUrls
    from loraops.workspace import Workspace

FLOW_ENTRYPOINT = "flows/retrain.py:retrain"


@dataclass(frozen=True)
class DeploymentInfo:
    """The registered deployment, as the CLI reports it."""

    name: str  # retrain/<deployment>
    deployment_id: str
    work_pool: str
    cron: str | None
    timezone: str
    url: str


def worker_service_spec(ws: Workspace, params: Params, prefect_api: str) -> ServiceSpec:
    """`prefect worker start` on the process work pool, with its health check on stack.worker_port.
    Flow runs it starts inherit its environment (the control environment, PREFECT_API_URL)."""
    stack = params.stack
    return ServiceSpec(
        name="worker",
        command=[
            control_env().bin / "prefect",
            "worker",
            "start",
            "--pool",
            params.schedule.work_pool,
            "--type",
            "process",
            "--name",
            f"loraops-{ws.root.name}",
            "--with-healthcheck",
        ],
        port=stack.worker_port,
        health_url=http_url(stack.host, stack.worker_port, "/health"),
        env={
            "PREFECT_API_URL": prefect_api,
            "PREFECT_WORKER_WEBSERVER_HOST": stack.host,
            "PREFECT_WORKER_WEBSERVER_PORT": str(stack.worker_port),
            "PREFECT_WORKER_QUERY_SECONDS": "5",
            "PREFECT_WORKER_PREFETCH_SECONDS": "10",
            "PREFECT_LOGGING_LEVEL": "INFO",
        },
        cwd=repo_root(),
        config_key="stack.worker_port",
        start_timeout_s=120,
    )


def deployment_name(params: Params) -> str:
    """The workspace's deployment of the retrain flow: ``schedule.deployment``, else the model's name."""
    return params.schedule.deployment or params.registry.model_name


def deployment_parameters(ws: Workspace) -> dict[str, Any]:
    """What each deployment run gets: this workspace; skip-unchanged is the flow's default."""
    return {"workspace": str(ws.root)}


def deploy_retrain(ws: Workspace, params: Params, prefect_api: str, prefect_ui: str) -> DeploymentInfo:
    """Create (or update) the process work pool and the retrain deployment with the cron schedule of
    params.yaml `schedule:`; idempotent. One retrain per model at a time is the flow's own concurrency
    limit (it also covers runs started outside the deployment, by `loraops retrain`)."""
    from prefect.schedules import Cron
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from loraops.flows import load_flow

    schedule = params.schedule
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        _ensure_work_pool(schedule.work_pool)
        retrain = load_flow("retrain")
        try:
            source = retrain.from_source(source=str(repo_root()), entrypoint=FLOW_ENTRYPOINT)
            with contextlib.redirect_stdout(io.StringIO()):  # Prefect prints a table of what it applied
                deployment_id = source.deploy(
                    name=deployment_name(params),
                    work_pool_name=schedule.work_pool,
                    schedules=[Cron(schedule.cron, timezone=schedule.timezone)] if schedule.cron else [],
                    parameters=deployment_parameters(ws),
                    description=f"Retrain {params.registry.model_name} in {ws.root} (loraops).",
                    tags=["loraops", params.registry.model_name],
                    job_variables={"env": {"PYTHONUNBUFFERED": "1"}},
                    build=False,
                    push=False,
                    print_next_steps=False,
                    ignore_warnings=True,
                )
            _drop_other_deployments_of(ws, keep=deployment_id)
        except Exception as exc:  # Prefect raises its own types here; say what failed and where
            raise StackError(
                f"could not register the retrain deployment with the Prefect API at {prefect_api}: {exc}",
                hint="check `loraops status` and .loraops/logs/prefect.log",
            ) from exc
    return DeploymentInfo(
        name=f"retrain/{deployment_name(params)}",
        deployment_id=str(deployment_id),
        work_pool=schedule.work_pool,
        cron=schedule.cron,
        timezone=schedule.timezone,
        url=f"{prefect_ui.rstrip('/')}/deployments/deployment/{deployment_id}",
    )


def _drop_other_deployments_of(ws: Workspace, keep: Any) -> None:
    """Delete this workspace's other retrain deployments (one renamed in params.yaml, or `scheduled`,
    the single name of older releases): each workspace has one. Other workspaces' are never touched."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    from loraops.stack.prefect_api import RETRAIN_FLOW, same_workspace

    with get_client(sync_client=True) as client:
        for found in client.read_deployments(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[RETRAIN_FLOW]))
        ):
            if found.id != keep and same_workspace((found.parameters or {}).get("workspace"), str(ws.root)):
                client.delete_deployment(found.id)


def _ensure_work_pool(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # created meanwhile (the worker does too)
                client.create_work_pool(WorkPoolCreate(name=name, type="process"))


def up_worker(
    ws: Workspace, params: Params, urls: StackUrls, on_event: Callable[[str], None] | None = None
) -> DeploymentInfo:
    """Register the retrain deployment and start the worker that runs it (kept when already running
    with the same settings); on another workspace's stack, that stack's worker runs it."""
    from loraops.stack.local import uses_shared_stack

    info = deploy_retrain(ws, params, urls.prefect_api, urls.prefect_ui)
    if not uses_shared_stack(params):
        ServiceManager(ws.state, on_event).start(worker_service_spec(ws, params, urls.prefect_api))
    return info


def trigger_retrain(prefect_api: str, deployment: str, parameters: dict[str, Any] | None = None) -> str:
    """Create a flow run of ``retrain/<deployment>`` as the scheduler or the UI's "Run" would; its id."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_api}), get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(f"retrain/{deployment}")
        run = client.create_flow_run_from_deployment(found.id, parameters=parameters or {})
    return str(run.id)


def wait_for_run(prefect_api: str, flow_run_id: str, timeout_s: float = 1800.0) -> str:
    """Wait until the flow run reaches a final state; its state name (Completed, Failed, Cancelled...)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout_s
    with temporary_settings({PREFECT_API_URL: prefect_api}), get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            state = client.read_flow_run(UUID(flow_run_id)).state
            if state is not None and state.is_final():
                return str(state.name)
            time.sleep(2)
    raise StackError(
        f"flow run {flow_run_id} did not finish within {timeout_s:.0f} s",
        hint="is the worker running? see .loraops/logs/worker.log",
    )
