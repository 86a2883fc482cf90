"""The local stack: MLflow, Prefect, the vLLM server and the alias sync hook, started and stopped together."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraops.config import Params
from loraops.envs import control_env
from loraops.errors import StackError
from loraops.files import read_or_create_secret
from loraops.registry.server import mlflow_service_spec
from loraops.services import RunningService, ServiceManager, ServiceSpec, http_ok, http_url, port_is_free
from loraops.serving.sync import sync_service_spec
from loraops.serving.vllm import (
    VllmClient,
    replica_name,
    replica_urls,
    router_service_spec,
    vllm_service_spec,
)
from loraops.stack.stores import prefect_database_env, with_mlflow_stores
from loraops.workspace import Workspace

START_ORDER = ("mlflow", "prefect", "vllm", "router", "sync")


@dataclass(frozen=True)
class StackUrls:
    mlflow: str
    prefect_ui: str
    prefect_api: str
    endpoint: str
    sync: str
    replicas: tuple[str, ...] = ()

    @property
    def server(self) -> str:
        """The root URL applications call (the endpoint without /v1): vLLM, or the router in front."""
        return self.endpoint.removesuffix("/v1")

    @property
    def replica(self) -> str:
        """The first vLLM replica's root URL: where loraops itself loads and asks the versions it
        evaluates (a load through the router would land on one replica only)."""
        return self.replicas[0] if self.replicas else self.server


def stack_urls(params: Params) -> StackUrls:
    host = params.stack.host
    prefect_api = params.stack.prefect_api_url or http_url(host, params.stack.prefect_port, "/api")
    return StackUrls(
        mlflow=params.stack.tracking_uri or http_url(host, params.stack.mlflow_port),
        prefect_ui=prefect_api.removesuffix("/api"),
        prefect_api=prefect_api,
        endpoint=http_url(params.serving.host, params.serving.port, "/v1"),
        sync=(params.stack.sync_url or http_url(host, params.stack.sync_port)).rstrip("/"),
        replicas=tuple(replica_urls(params.serving)),
    )


def prefect_service_spec(ws: Workspace, params: Params) -> ServiceSpec:
    """The Prefect server: SQLite under .loraops/prefect, or stack.prefect_database_url."""
    host, port = params.stack.host, params.stack.prefect_port
    return ServiceSpec(
        name="prefect",
        command=[control_env().bin / "prefect", "server", "start", "--host", host, "--port", str(port)],
        port=port,
        health_url=http_url(host, port, "/api/health"),
        env={
            "PREFECT_HOME": str(ws.state / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_API_URL": http_url(host, port, "/api"),
            **prefect_database_env(params.stack.prefect_database_url),
        },
        config_key="stack.prefect_port",
        start_timeout_s=120,
    )


def webhook_secret(ws: Workspace) -> Path:
    """The shared secret MLflow signs webhook deliveries with (created once, kept private)."""
    path = ws.state / "webhook.secret"
    read_or_create_secret(path)
    return path


@dataclass(frozen=True)
class ServingCredentials:
    """The vLLM server's API key (applications send it) and the admin token of its load/unload
    endpoints (only loraops holds it: the sync hook and the evaluation)."""

    api_key: str
    api_key_file: Path
    admin_token_file: Path

    @property
    def admin_token(self) -> str:
        return read_or_create_secret(self.admin_token_file)


def uses_shared_stack(params: Params) -> bool:
    """True when this workspace's models are served by another workspace's stack (``stack.sync_url``)."""
    return params.stack.sync_url is not None


def serving_credentials(ws: Workspace, params: Params) -> ServingCredentials:
    """Read the serving secrets, making each one (mode 600) on first use; a shared stack's secrets are
    only read (they belong to the workspace that runs it)."""
    key_file = ws.root / (params.serving.api_key_file or ws.state / "vllm-api.key")
    admin = ws.root / (params.serving.admin_token_file or ws.state / "vllm-admin.token")
    if uses_shared_stack(params):
        for path, key in ((key_file, "serving.api_key_file"), (admin, "serving.admin_token_file")):
            if not path.is_file():
                raise StackError(
                    f"{path} does not exist, so the shared serving stack at {params.stack.sync_url} cannot "
                    "be used",
                    hint=f"point {key} at the file in the .loraops/ of the workspace that runs the stack",
                )
    read_or_create_secret(admin)
    return ServingCredentials(read_or_create_secret(key_file), key_file, admin)


def vllm_client(ws: Workspace, params: Params, timeout_s: float = 30.0) -> VllmClient:
    """A client of the stack's first vLLM replica with its API key and admin token."""
    creds = serving_credentials(ws, params)
    return VllmClient(
        stack_urls(params).replica,
        timeout_s,
        max_lora_rank=params.serving.max_lora_rank,
        swap=params.serving.swap,
        api_key=creds.api_key,
        admin_token=creds.admin_token,
    )


def check_ports(ws: Workspace, params: Params) -> None:
    """Fail before anything starts when a port we need is taken by something that is not ours."""
    manager = ServiceManager(ws.state)
    serving = params.serving
    wanted: list[tuple[str, int, str]] = []
    if not uses_shared_stack(params):
        wanted += [
            (replica_name(serving, i), port, "serving.port") for i, port in enumerate(serving.replica_ports())
        ]
        wanted.append(("sync", params.stack.sync_port, "stack.sync_port"))
        if serving.replicas > 1:
            wanted.append(("router", serving.port, "serving.port"))
    if params.stack.tracking_uri is None:
        wanted.append(("mlflow", params.stack.mlflow_port, "stack.mlflow_port"))
    if params.stack.prefect_api_url is None:
        wanted.append(("prefect", params.stack.prefect_port, "stack.prefect_port"))
    if not uses_shared_stack(params):  # on another workspace's stack, its worker runs our deployment
        wanted.append(("worker", params.stack.worker_port, "stack.worker_port"))
    for name, port, key in wanted:
        mine = manager.get(name)
        if (mine is None or mine.port != port) and not port_is_free(port, params.stack.host):
            raise StackError(
                f"port {port} is already in use, so {name} cannot start",
                hint=f"stop whatever listens there or set {key} in params.yaml",
            )


def up_control_plane(
    ws: Workspace, params: Params, on_event: Callable[[str], None] | None = None
) -> StackUrls:
    """Start MLflow and Prefect only (what training and registration need; no model server)."""
    ws.ensure()
    manager = ServiceManager(ws.state, on_event)
    manager.start_all(_control_plane_specs(ws, params))
    return stack_urls(params)


def _control_plane_specs(ws: Workspace, params: Params) -> list[ServiceSpec]:
    specs: list[ServiceSpec] = []
    if params.stack.tracking_uri is None:
        specs.append(mlflow_spec(ws, params))
    if params.stack.prefect_api_url is None:
        specs.append(prefect_service_spec(ws, params))
    return specs


def mlflow_spec(ws: Workspace, params: Params) -> ServiceSpec:
    """The MLflow server: SQLite and local artifacts under .loraops/mlflow, or the stores set in
    params.yaml (stack.mlflow_backend_store_uri, mlflow_artifacts_destination, mlflow_s3_endpoint_url)."""
    stack = params.stack
    return with_mlflow_stores(
        mlflow_service_spec(ws.state, stack.mlflow_port, host=stack.host),
        stack.mlflow_backend_store_uri,
        stack.mlflow_artifacts_destination,
        stack.mlflow_s3_endpoint_url,
    )


def up(
    ws: Workspace, params: Params, base_model: str, on_event: Callable[[str], None] | None = None
) -> StackUrls:
    """Start whatever is not running yet; services that already run healthy with the same settings are
    kept. ``on_event`` hears each start and restart."""
    ws.ensure()
    urls = stack_urls(params)
    manager = ServiceManager(ws.state, on_event)
    first = _control_plane_specs(ws, params)
    creds = serving_credentials(ws, params)
    if uses_shared_stack(params):
        manager.start_all(first)
        check_shared_stack(urls, creds, params.base_model.name(), base_model)
        converge(urls, creds, params.registry.model_name, on_event)
        return urls
    first += [
        vllm_service_spec(
            base_model,
            params.base_model.name(),
            params.serving,
            api_key=creds.api_key,
            admin_token_file=creds.admin_token_file,
            replica=i,
        )
        for i in range(params.serving.replicas)
    ]
    if params.serving.replicas > 1:
        first.append(router_service_spec(params.serving))
    for svc in manager.running():  # fewer replicas than before: stop the extra ones
        if svc.name.startswith("vllm") and svc.name not in {s.name for s in first}:
            manager.stop(svc.name)
    manager.start_all(first)
    manager.start(
        sync_service_spec(
            state_dir=ws.state,
            port=params.stack.sync_port,
            host=params.stack.host,
            tracking_uri=urls.mlflow,
            vllm_urls=list(urls.replicas),
            model_name=params.registry.model_name,
            base_model=params.base_model.name(),
            max_models=params.serving.max_models,
            champion_alias=params.registry.champion_alias,
            challenger_alias=params.registry.challenger_alias,
            secret_file=webhook_secret(ws),
            token_file=creds.admin_token_file,
            api_key_file=creds.api_key_file,
            adapters_dir=ws.serving_adapters,
            max_lora_rank=params.serving.max_lora_rank,
            swap=params.serving.swap,
            warm_versions=params.serving.warm_versions,
        )
    )
    converge(urls, creds, params.registry.model_name, on_event)
    return urls


def check_shared_stack(urls: StackUrls, creds: ServingCredentials, served_name: str, base_model: str) -> None:
    """Fail clearly unless the shared stack's hook answers and its server serves our base model: the same
    served name, from a directory of the same name (built models carry their recipe's fingerprint in it)."""
    if not http_ok(f"{urls.sync}/health"):
        raise StackError(
            f"the shared sync hook at {urls.sync} does not answer",
            hint="start the stack in the workspace that runs it (`loraops up` there) or fix stack.sync_url",
        )
    client = VllmClient(urls.server, api_key=creds.api_key)
    try:
        served = {m.id: m.root for m in client.models()}
    except Exception as exc:
        raise StackError(
            f"the shared vLLM server at {urls.endpoint} did not list its models: {exc}",
            hint="check serving.host/port and serving.api_key_file against the workspace that runs the stack",
        ) from None
    same = served_name in served and Path(served[served_name]).name == Path(base_model).name
    if not same:
        there = ", ".join(f"{n} ({root})" for n, root in sorted(served.items())) or "nothing"
        raise StackError(
            f"the shared vLLM server at {urls.endpoint} serves {there}, not this workspace's base model "
            f"{served_name} ({base_model}): an adapter only runs on the base model it was trained on",
            hint="train on the same base_model as the workspace that runs the stack, or run your own stack",
        )


def converge(
    urls: StackUrls,
    creds: ServingCredentials,
    model: str,
    on_event: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Ask the sync hook to reconcile now and return ``model``'s result: when ``up`` returns, its stable
    name serves its champion (or the hook said why not)."""
    req = urllib.request.Request(  # noqa: S310 (the hook's loopback URL)
        f"{urls.sync}/reconcile?model={urllib.parse.quote(model)}",
        data=b"",
        method="POST",
        headers={"Authorization": f"Bearer {creds.admin_token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:  # noqa: S310
            result: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        result = json.loads(exc.read() or b"{}")
        if exc.code == 404:  # not registered yet: the hook follows it from its first registration on
            if on_event is not None:
                on_event(f"serving: {model} is not served yet ({result.get('error', 'unknown model')})")
            return result
    except (urllib.error.URLError, OSError) as exc:
        raise StackError(
            f"the sync hook at {urls.sync} did not answer: {exc}", hint="see .loraops/logs/sync.log"
        ) from None
    if on_event is not None:
        version = result.get("version")
        if result.get("error"):
            on_event(f"serving: the sync hook could not reach the desired state: {result['error']}")
        elif version:
            on_event(
                f"serving: the stable name serves the champion, version {version} ({result.get('action')})"
            )
        else:
            on_event("serving: no champion yet; the stable name is not served")
    return result


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
