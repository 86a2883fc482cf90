"""The alias sync hook: keeps the server serving the registered version that the alias points at.

MLflow calls ``POST /hooks/mlflow`` when an alias is set (webhook event model_version_alias.created).
The hook does not trust the event's version: it asks the registry where the alias points *now*, so
retried or reordered deliveries converge on the same state. The same reconcile step runs at start-up
and periodically, which heals a missed delivery and a restarted vLLM (runtime adapters are lost when it
restarts).

Each version is downloaded to its own directory ``<adapters_dir>/<model>/v<version>`` and loaded under
the stable name ``<model>``; the server's reported path for that name tells which version it serves.

Run it with ``python -m loraops.serving.sync --port ... --tracking-uri ... --vllm-url ...``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import re
import secrets
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from loraops.registry.server import read_or_create_secret
from loraops.stack.process import ServiceSpec

if TYPE_CHECKING:  # importing the registry adapter imports mlflow, which is slow
    from loraops.registry.tracking import ModelVersionInfo

HOOK_PATH = "/hooks/mlflow"
SIGNATURE_TOLERANCE_S = 300.0
MAX_BODY_BYTES = 1 << 20
ADAPTER_MARKER = "adapter_config.json"

# -- pure parts -------------------------------------------------------------------------------------------


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's signature: ``v1,`` + base64 HMAC-SHA256 of ``{delivery_id}.{timestamp}.{body}``."""
    mac = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")


def verify_signature(
    secret: str,
    delivery_id: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    now: float | None = None,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
) -> bool:
    """True when ``signature`` (one or more space-separated ``v1,<b64>``) signs this delivery.

    With ``now`` given, a timestamp more than ``tolerance_s`` away from it is refused as well (replay).
    """
    if not secret or not delivery_id or not timestamp or not signature:
        return False
    if now is not None:
        try:
            if abs(now - float(timestamp)) > tolerance_s:
                return False
        except ValueError:
            return False
    expected = sign(secret, delivery_id, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in signature.split())


@dataclass(frozen=True)
class AliasEvent:
    name: str
    alias: str
    version: str


def parse_alias_event(body: bytes) -> AliasEvent | None:
    """The alias-created event in an MLflow webhook body, or None for anything else."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    if doc.get("entity") != "model_version_alias" or doc.get("action") != "created":
        return None
    data = doc.get("data")
    if not isinstance(data, dict):
        return None
    fields = [data.get(k) for k in ("name", "alias", "version")]
    if not all(isinstance(f, str | int) and str(f) for f in fields):
        return None
    name, alias, version = (str(f) for f in fields)
    return AliasEvent(name=name, alias=alias, version=version)


Action = Literal["loaded", "unchanged", "ignored", "no-target", "failed"]


@dataclass(frozen=True)
class SyncResult:
    action: Action
    at: str
    trigger: str
    version: str | None = None  # the version the alias points at (None: unknown or unset)
    path: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.action != "failed"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass(frozen=True)
class Served:
    version: str
    path: str
    since: str


# -- ports ------------------------------------------------------------------------------------------------


class AdapterSource(Protocol):
    """What the hook needs from the registry (``loraops.registry.tracking.Registry``)."""

    def version_by_alias(self, alias: str) -> ModelVersionInfo | None: ...

    def download_adapter(self, version: str, dest: Path) -> Path: ...


class ServingBackend(Protocol):
    """What the hook needs from the inference server (``loraops.serving.vllm.VllmClient``)."""

    def load_adapter(self, name: str, path: str) -> Any: ...

    def served_path(self, name: str) -> str | None: ...


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _is_adapter(path: Path) -> bool:
    return (path / ADAPTER_MARKER).is_file()


def _describe(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class AliasSync:
    def __init__(
        self,
        registry: AdapterSource,
        server: ServingBackend,
        adapters_dir: Path,
        model_name: str,
        alias: str,
        *,
        clock: Callable[[], str] = _utc_now,
    ) -> None:
        self.registry = registry
        self.server = server
        self.model_name = model_name
        self.alias = alias
        self.model_dir = adapters_dir.resolve() / model_name
        self._clock = clock
        self._lock = threading.Lock()  # one reconcile at a time
        self._state_lock = threading.Lock()  # status() must not wait for a download
        self.last: SyncResult | None = None
        self.last_failure: SyncResult | None = None
        self.serving: Served | None = None

    def version_dir(self, version: str) -> Path:
        return self.model_dir / f"v{version}"

    def reconcile(self, trigger: str = "reconcile") -> SyncResult:
        """Make the server serve the alias target; a no-op when it already does."""
        with self._lock:
            version: str | None = None
            try:
                target = self.registry.version_by_alias(self.alias)
                if target is None:
                    return self._record(SyncResult("no-target", self._clock(), trigger))
                version = target.version
                dest = self.version_dir(version)
                current = self.server.served_path(self.model_name)
                if current is not None and Path(current) == dest and _is_adapter(dest):
                    return self._record(SyncResult("unchanged", self._clock(), trigger, version, str(dest)))
                if not _is_adapter(dest):
                    self.registry.download_adapter(version, dest)
                if not _is_adapter(dest):
                    raise ValueError(f"version {version} has no {ADAPTER_MARKER}: not a LoRA adapter")
                self.server.load_adapter(self.model_name, str(dest))
                after = self.server.served_path(self.model_name)
                if after is None or Path(after) != dest:
                    raise RuntimeError(f"server reports {after!r} for {self.model_name} after loading {dest}")
                self._prune(keep={dest, Path(current)} if current else {dest})
                return self._record(SyncResult("loaded", self._clock(), trigger, version, str(dest)))
            except Exception as exc:  # a long-running hook records every failure instead of dying
                return self._record(
                    SyncResult("failed", self._clock(), trigger, version, error=_describe(exc))
                )

    def handle(self, event: AliasEvent) -> SyncResult:
        if event.name != self.model_name or event.alias != self.alias:
            return SyncResult("ignored", self._clock(), f"webhook {event.name}@{event.alias}", event.version)
        return self.reconcile(trigger=f"webhook: {event.alias} -> v{event.version}")

    def status(self) -> dict[str, Any]:
        with self._state_lock:
            return {
                "model": self.model_name,
                "alias": self.alias,
                "served_version": self.serving.version if self.serving else None,
                "served_path": self.serving.path if self.serving else None,
                "error": self.last.error if self.last else None,  # set while the last attempt failed
                "serving": asdict(self.serving) if self.serving else None,
                "last": self.last.to_dict() if self.last else None,
                "last_failure": self.last_failure.to_dict() if self.last_failure else None,
            }

    def _record(self, result: SyncResult) -> SyncResult:
        with self._state_lock:
            self.last = result
            if not result.ok:
                self.last_failure = result
            elif (
                result.action in ("loaded", "unchanged")
                and result.version
                and result.path
                and (self.serving is None or self.serving.path != result.path)
            ):
                self.serving = Served(result.version, result.path, result.at)
        return result

    def _prune(self, keep: set[Path]) -> None:
        """Delete downloaded versions other than ``keep`` (the new one and the one it replaced)."""
        if not self.model_dir.is_dir():
            return
        for child in self.model_dir.iterdir():
            if child.is_dir() and child not in keep and re.fullmatch(r"\.?v\d+(\..*)?", child.name):
                shutil.rmtree(child, ignore_errors=True)


# -- HTTP service -----------------------------------------------------------------------------------------


class SyncServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], sync: AliasSync, secret: str) -> None:
        super().__init__(address, _Handler)
        self.sync = sync
        self.secret = secret
        self._count_lock = threading.Lock()
        self.deliveries = {"accepted": 0, "rejected": 0}
        self.webhook: dict[str, Any] = {"registered": None, "error": None}  # None: not asked to register

    def count(self, outcome: str) -> None:
        with self._count_lock:
            self.deliveries[outcome] += 1

    def status(self) -> dict[str, Any]:
        with self._count_lock:
            counts = dict(self.deliveries)
        return {**self.sync.status(), "deliveries": counts, "webhook": dict(self.webhook)}


class _Handler(BaseHTTPRequestHandler):
    server: SyncServer
    protocol_version = "HTTP/1.1"

    def _reply(self, code: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._reply(200, {"ok": True})
        elif self.path == "/status":
            self._reply(200, self.server.status())
        else:
            self._reply(404, {"error": f"no such path {self.path}"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._reply(413, {"error": "body too large"})
            return
        body = self.rfile.read(length) if length else b""
        if self.path == "/reconcile":
            result = self.server.sync.reconcile(trigger="manual")
            self._reply(200 if result.ok else 500, result.to_dict())
        elif self.path == HOOK_PATH:
            self._hook(body)
        else:
            self._reply(404, {"error": f"no such path {self.path}"})

    def _hook(self, body: bytes) -> None:
        ok = verify_signature(
            self.server.secret,
            self.headers.get("X-MLflow-Delivery-Id", ""),
            self.headers.get("X-MLflow-Timestamp", ""),
            body,
            self.headers.get("X-MLflow-Signature", ""),
            now=time.time(),
        )
        self.server.count("accepted" if ok else "rejected")
        if not ok:
            self._reply(401, {"error": "missing or invalid X-MLflow-Signature"})
            return
        event = parse_alias_event(body)
        if event is None:
            self._reply(200, {"action": "ignored", "reason": "not a model_version_alias.created event"})
            return
        # 500 on failure: MLflow retries, and the delivery shows as failed in its server log.
        result = self.server.sync.handle(event)
        sys.stderr.write(f"{result.at} webhook {event}: {json.dumps(result.to_dict())}\n")
        self._reply(200 if result.ok else 500, result.to_dict())

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if self.command == "GET" and self.path in ("/health", "/status") and code == 200:
            return  # polled constantly; only the rest is worth a log line
        super().log_request(code, size)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{_utc_now()} {self.address_string()} {format % args}\n")


def webhook_secret(path: Path) -> str:
    """The shared secret of MLflow's webhook and the hook, made on first use (mode 600)."""
    return read_or_create_secret(path, lambda: secrets.token_urlsafe(32))


def connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host  # noqa: S104 (only compared)


def hook_url(host: str, port: int) -> str:
    return f"http://{connect_host(host)}:{port}{HOOK_PATH}"


def sync_service_spec(
    state_dir: Path,
    port: int,
    tracking_uri: str,
    vllm_url: str,
    model_name: str,
    alias: str,
    secret_file: Path,
    adapters_dir: Path,
    host: str = "127.0.0.1",
    reconcile_interval_s: float = 30.0,
    max_lora_rank: int | None = None,
    swap: Literal["reload", "inplace"] = "reload",
    webhook_url: str | None = None,
) -> ServiceSpec:
    """The hook as a managed service. At start it registers its own MLflow webhook (``webhook_url``,
    default ``http://<host>:<port>/hooks/mlflow``), then reconciles. ``max_lora_rank`` and ``swap`` are
    the serving params' (the vLLM client refuses too large an adapter before the server is asked)."""
    command = [
        sys.executable, "-m", "loraops.serving.sync",
        "--host", host,
        "--port", str(port),
        "--tracking-uri", tracking_uri,
        "--vllm-url", vllm_url,
        "--model-name", model_name,
        "--alias", alias,
        "--secret-file", str(secret_file),
        "--adapters-dir", str(adapters_dir),
        "--reconcile-interval", str(reconcile_interval_s),
        "--swap", swap,
        "--webhook-url", webhook_url or hook_url(host, port),
    ]  # fmt: skip
    if max_lora_rank is not None:
        command += ["--max-lora-rank", str(max_lora_rank)]
    return ServiceSpec(
        name="sync",
        command=command,
        port=port,
        health_url=f"http://{connect_host(host)}:{port}/health",
        env={"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "PYTHONUNBUFFERED": "1"},
        cwd=state_dir,
        start_timeout_s=60.0,
        config_key="stack.sync_port",
    )


def serve(
    sync: AliasSync,
    secret: str,
    host: str,
    port: int,
    reconcile_interval_s: float,
    register_webhook: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT; reconcile at start and then every ``reconcile_interval_s`` (0: never).

    ``register_webhook`` runs before the first reconcile (so no alias move falls between the two) and
    is retried until it succeeds: MLflow may come up after the hook.
    """
    httpd = SyncServer((host, port), sync, secret)
    stop = threading.Event()

    def loop() -> None:
        trigger = "startup"
        pending = register_webhook
        while not stop.is_set():
            if pending is not None:
                try:
                    pending()
                    httpd.webhook = {"registered": True, "error": None}
                    pending = None
                except Exception as exc:  # retried on the next round
                    httpd.webhook = {"registered": False, "error": _describe(exc)}
                    sys.stderr.write(f"{_utc_now()} registering the webhook failed: {_describe(exc)}\n")
            result = sync.reconcile(trigger=trigger)
            sys.stderr.write(f"{result.at} reconcile ({trigger}): {json.dumps(result.to_dict())}\n")
            wait = reconcile_interval_s if reconcile_interval_s > 0 else (5.0 if pending else 0.0)
            if wait <= 0 or stop.wait(wait):
                return
            trigger = "periodic"

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=loop, name="reconcile", daemon=True).start()
    sys.stderr.write(f"{_utc_now()} alias sync for {sync.model_name}@{sync.alias} on http://{host}:{port}\n")
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loraops.serving.sync", description="The loraops alias sync hook."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--vllm-url", required=True)
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--alias", required=True)
    parser.add_argument("--secret-file", type=Path, required=True)
    parser.add_argument("--adapters-dir", type=Path, required=True)
    parser.add_argument("--reconcile-interval", type=float, default=30.0, help="seconds; 0 turns it off")
    parser.add_argument("--max-lora-rank", type=int, default=None, help="the vLLM server's --max-lora-rank")
    parser.add_argument("--swap", choices=["reload", "inplace"], default="reload")
    parser.add_argument(
        "--webhook-url",
        default=None,
        help="register this URL as MLflow webhook at start (how MLflow reaches us)",
    )
    parser.add_argument("--no-webhook", action="store_true", help="do not register a webhook at start")
    args = parser.parse_args(argv)

    from loraops.registry.params import RegistryParams
    from loraops.registry.tracking import Registry
    from loraops.serving.vllm import VllmClient

    registry = Registry(
        args.tracking_uri,
        RegistryParams(model_name=args.model_name, champion_alias=args.alias),
    )
    sync = AliasSync(
        registry,
        VllmClient(args.vllm_url, max_lora_rank=args.max_lora_rank, swap=args.swap),
        args.adapters_dir,
        args.model_name,
        args.alias,
    )
    secret = webhook_secret(args.secret_file)
    url = args.webhook_url or hook_url(args.host, args.port)
    register = None if args.no_webhook else (lambda: registry.ensure_webhook(url, secret))
    serve(sync, secret, args.host, args.port, args.reconcile_interval, register)
    return 0


if __name__ == "__main__":
    sys.exit(main())
