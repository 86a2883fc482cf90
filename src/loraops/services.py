"""Long-running local services (MLflow, Prefect, vLLM, the alias sync hook) as managed processes.

Each service runs in its own process group (MLflow 3.17 starts a uvicorn worker and job consumers as
children: stopping only the parent leaves them behind), writes its output to a log file, and records
its pid in ``<state>/pids/<name>.json`` so that ``loraops down`` finds it from another process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loraops.envs import inherited_environ
from loraops.errors import StackError

logger = logging.getLogger(__name__)
FORBID_SERVICES_ENV = "LORAOPS_FORBID_SERVICES"  # set by `make test-fast`'s guard (tests/conftest.py)


def connect_host(host: str) -> str:
    """The address a client on this machine uses for a server bound to ``host`` (wildcards: loopback)."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host  # noqa: S104 (only compared)


def http_url(host: str, port: int, path: str = "") -> str:
    """``http://<connect_host(host)>:<port><path>``: how this machine reaches a local service."""
    return f"http://{connect_host(host)}:{port}{path}"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback URLs we built)
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class ServiceSpec:
    name: str
    command: Sequence[str | os.PathLike[str]]
    port: int
    health_url: str
    env: Mapping[str, str] = field(default_factory=dict)  # the service's own variables (fingerprinted)
    path_prefix: Sequence[str | os.PathLike[str]] = ()  # directories put first on the inherited PATH
    cwd: Path | None = None
    start_timeout_s: float = 180.0
    config_key: str = ""  # the params.yaml key that sets the port, named in errors

    def fingerprint(self) -> str:
        """What the service itself is started with: its command line, its own variables, its PATH prefix
        and working directory. A change there (another base model, other serving flags) means the running
        service is stale; the rest of the caller's environment is inherited and not part of it."""
        payload = json.dumps(
            {
                "command": [str(c) for c in self.command],
                "env": dict(sorted(self.env.items())),
                "path_prefix": [str(p) for p in self.path_prefix],
                "cwd": str(self.cwd),
            }
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def launch_environ(spec: ServiceSpec) -> dict[str, str]:
    """The environment the service's process gets: the caller's, its own variables over it, its PATH
    prefix first."""
    env = inherited_environ()
    env.update(spec.env)
    if spec.path_prefix:
        env["PATH"] = os.pathsep.join([*(str(p) for p in spec.path_prefix), env.get("PATH", "")])
    return env


@dataclass
class RunningService:
    name: str
    pid: int
    port: int
    health_url: str
    log_file: str
    fingerprint: str = ""  # ServiceSpec.fingerprint() of what it was started with

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True


class ServiceManager:
    """Starts, finds and stops the services whose pid files live under ``state_dir``.

    ``on_event`` hears one line per service started or restarted (the CLI prints them).
    """

    def __init__(self, state_dir: Path, on_event: Callable[[str], None] | None = None) -> None:
        self.pid_dir = state_dir / "pids"
        self.log_dir = state_dir / "logs"
        self.on_event = on_event or (lambda line: logger.info("%s", line))

    def _pid_file(self, name: str) -> Path:
        return self.pid_dir / f"{name}.json"

    def get(self, name: str) -> RunningService | None:
        path = self._pid_file(name)
        if not path.exists():
            return None
        try:
            svc = RunningService(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            path.unlink(missing_ok=True)
            return None
        if not svc.alive():
            path.unlink(missing_ok=True)
            return None
        return svc

    def start(self, spec: ServiceSpec) -> RunningService:
        """Start ``spec`` unless it already runs healthy; wait until its health URL answers."""
        return self.start_all([spec])[0]

    def start_all(self, specs: list[ServiceSpec]) -> list[RunningService]:
        """Launch every service first, then wait for each: start-up times overlap instead of adding up."""
        for spec in specs:  # refuse before launching anything, so a busy port leaves nothing half-started
            existing = self.get(spec.name)
            ours = existing is not None and existing.port == spec.port
            if not ours and not port_is_free(spec.port):
                self._raise_port_in_use(spec)
        started = time.monotonic()
        launched = [self._launch(spec) for spec in specs]
        return [
            self._wait(spec, svc, proc, started) for spec, (svc, proc) in zip(specs, launched, strict=True)
        ]

    def _launch(self, spec: ServiceSpec) -> tuple[RunningService, subprocess.Popen[bytes] | None]:
        existing = self.get(spec.name)
        if existing is not None and existing.port == spec.port and http_ok(existing.health_url):
            if existing.fingerprint == spec.fingerprint():
                return existing, None
            self.on_event(
                f"restarting {spec.name}: its settings changed (command line, its own variables or "
                "working directory); it is unavailable until it is healthy again"
            )
        elif existing is not None and existing.port != spec.port:
            self.on_event(f"restarting {spec.name} on port {spec.port} (it ran on {existing.port})")
        elif existing is not None:
            self.on_event(f"restarting {spec.name}: it runs but does not answer {existing.health_url}")
        else:
            self.on_event(f"starting {spec.name}")
        if existing is not None:
            self.stop(spec.name)
        if not port_is_free(spec.port):
            self._raise_port_in_use(spec)
        if os.environ.get(FORBID_SERVICES_ENV):  # the test suite's fast tests: no service may start
            raise StackError(f"{spec.name} may not start here ({os.environ[FORBID_SERVICES_ENV]})")
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.log_dir / f"{spec.name}.log"
        env = launch_environ(spec)
        with log_file.open("ab") as log:
            proc = subprocess.Popen(
                [str(c) for c in spec.command],
                cwd=spec.cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        svc = RunningService(
            spec.name, proc.pid, spec.port, spec.health_url, str(log_file), spec.fingerprint()
        )
        self._pid_file(spec.name).write_text(json.dumps(svc.__dict__))
        return svc, proc

    @staticmethod
    def _raise_port_in_use(spec: ServiceSpec) -> None:
        where = f"set {spec.config_key} in params.yaml" if spec.config_key else "choose another port"
        raise StackError(
            f"port {spec.port} is already in use, so {spec.name} cannot start",
            hint=f"stop whatever listens there or {where}",
        )

    def _wait(
        self,
        spec: ServiceSpec,
        svc: RunningService,
        proc: subprocess.Popen[bytes] | None,
        started: float,
    ) -> RunningService:
        if proc is None:
            return svc
        deadline = time.monotonic() + spec.start_timeout_s  # from now: earlier services took their time
        next_note = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            if time.monotonic() >= next_note:  # say what a long start is doing instead of going silent
                self.on_event(
                    f"waiting for {spec.name} to answer {spec.health_url} "
                    f"({time.monotonic() - started:.0f} s since it was started; "
                    f"log {svc.log_file})"
                )
                next_note += 20.0
            if proc.poll() is not None:
                self._pid_file(spec.name).unlink(missing_ok=True)
                raise StackError(
                    f"{spec.name} exited with code {proc.returncode} while starting",
                    hint=f"see {svc.log_file}",
                )
            if http_ok(spec.health_url):
                return svc
            time.sleep(0.5)
        self.stop(spec.name)
        raise StackError(
            f"{spec.name} did not become healthy within {spec.start_timeout_s:.0f} s",
            hint=f"see {svc.log_file}",
        )

    def stop(self, name: str, timeout_s: float = 20.0) -> bool:
        """Stop the service's whole process group. Returns False when it was not running."""
        path = self._pid_file(name)
        svc = self.get(name)
        path.unlink(missing_ok=True)
        if svc is None:
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(svc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.killpg(svc.pid, 0)
            except (ProcessLookupError, PermissionError):
                return True
            with contextlib.suppress(ChildProcessError):
                os.waitpid(svc.pid, os.WNOHANG)
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(svc.pid, signal.SIGKILL)
        return True

    def running(self) -> list[RunningService]:
        if not self.pid_dir.exists():
            return []
        found = [self.get(p.stem) for p in sorted(self.pid_dir.glob("*.json"))]
        return [s for s in found if s is not None]
