"""The local stack: MLflow, Prefect, the vLLM server and the alias sync hook, started and stopped together."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from loraops.config import Params
from loraops.envs import control_env
from loraops.errors import StackError
from loraops.registry.server import mlflow_service_spec
from loraops.serving.sync import sync_service_spec
from loraops.serving.vllm import vllm_service_spec
from loraops.stack.process import RunningService, ServiceManager, ServiceSpec, port_is_free
from loraops.workspace import Workspace

START_ORDER = ("mlflow", "prefect", "vllm", "sync")


@dataclass(frozen=True)
class StackUrls:
    mlflow: str
    prefect_ui: str
    prefect_api: str
    endpoint: str
    sync: str

    @property
    def server(self) -> str:
        """The vLLM server's root URL (the endpoint without /v1), for health and adapter calls."""
        return self.endpoint.removesuffix("/v1")


def stack_urls(params: Params) -> StackUrls:
    host = params.stack.host
    prefect_api = params.stack.prefect_api_url or f"http://{host}:{params.stack.prefect_port}/api"
    return StackUrls(
        mlflow=params.stack.tracking_uri or f"http://{host}:{params.stack.mlflow_port}",
        prefect_ui=prefect_api.removesuffix("/api"),
        prefect_api=prefect_api,
        endpoint=f"http://{params.serving.host}:{params.serving.port}/v1",
        sync=f"http://{host}:{params.stack.sync_port}",
    )


def prefect_service_spec(ws: Workspace, params: Params) -> ServiceSpec:
    host, port = params.stack.host, params.stack.prefect_port
    return ServiceSpec(
        name="prefect",
        command=[control_env().bin / "prefect", "server", "start", "--host", host, "--port", str(port)],
        port=port,
        health_url=f"http://{host}:{port}/api/health",
        env={
            "PREFECT_HOME": str(ws.state / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_API_URL": f"http://{host}:{port}/api",
        },
        config_key="stack.prefect_port",
        start_timeout_s=120,
    )


def webhook_secret(ws: Workspace) -> Path:
    """The shared secret MLflow signs webhook deliveries with (created once, kept private)."""
    path = ws.state / "webhook.secret"
    if not path.exists():
        ws.state.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path


def check_ports(ws: Workspace, params: Params) -> None:
    """Fail before anything starts when a port we need is taken by something that is not ours."""
    manager = ServiceManager(ws.state)
    wanted = [
        ("vllm", params.serving.port, "serving.port"),
        ("sync", params.stack.sync_port, "stack.sync_port"),
    ]
    if params.stack.tracking_uri is None:
        wanted.append(("mlflow", params.stack.mlflow_port, "stack.mlflow_port"))
    if params.stack.prefect_api_url is None:
        wanted.append(("prefect", params.stack.prefect_port, "stack.prefect_port"))
    for name, port, key in wanted:
        mine = manager.get(name)
        if (mine is None or mine.port != port) and not port_is_free(port, params.stack.host):
            raise StackError(
                f"port {port} is already in use, so {name} cannot start",
                hint=f"stop whatever listens there or set {key} in params.yaml",
            )


def up_control_plane(ws: Workspace, params: Params) -> StackUrls:
    """Start MLflow and Prefect only (what training and registration need; no model server)."""
    ws.ensure()
    manager = ServiceManager(ws.state)
    manager.start_all(_control_plane_specs(ws, params))
    return stack_urls(params)


def _control_plane_specs(ws: Workspace, params: Params) -> list[ServiceSpec]:
    specs: list[ServiceSpec] = []
    if params.stack.tracking_uri is None:
        specs.append(mlflow_service_spec(ws.state, params.stack.mlflow_port, host=params.stack.host))
    if params.stack.prefect_api_url is None:
        specs.append(prefect_service_spec(ws, params))
    return specs


def up(ws: Workspace, params: Params, base_model: str) -> StackUrls:
    """Start whatever is not running yet; services that already run healthy are kept."""
    ws.ensure()
    urls = stack_urls(params)
    manager = ServiceManager(ws.state)
    first = _control_plane_specs(ws, params)
    first.append(vllm_service_spec(base_model, params.base_model.name(), params.serving))
    manager.start_all(first)
    manager.start(
        sync_service_spec(
            state_dir=ws.state,
            port=params.stack.sync_port,
            host=params.stack.host,
            tracking_uri=urls.mlflow,
            vllm_url=urls.server,
            model_name=params.registry.model_name,
            alias=params.registry.champion_alias,
            secret_file=webhook_secret(ws),
            adapters_dir=ws.serving_adapters,
        )
    )
    return urls


def down(ws: Workspace) -> list[str]:
    manager = ServiceManager(ws.state)
    stopped = []
    for name in reversed(START_ORDER):
        if manager.stop(name):
            stopped.append(name)
    for svc in manager.running():
        manager.stop(svc.name)
        stopped.append(svc.name)
    return stopped


def status(ws: Workspace) -> list[RunningService]:
    return ServiceManager(ws.state).running()
