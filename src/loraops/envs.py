"""The three Python environments and running commands inside them.

loraops runs in three environments because their pins conflict (see infra/envs/):
the control plane (this process: Prefect, DVC, MLflow), the trainer (Axolotl + torch) and the server
(vLLM). This module finds the trainer and server interpreters and runs their commands with output
streamed line by line, so long work shows its progress.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraops.errors import StageError

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "AXOLOTL_DO_NOT_TRACK": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}


_PR_SET_PDEATHSIG = 1


def inherited_environ() -> dict[str, str]:
    """This process's environment, as a child in one of loraops' environments should inherit it.

    Without PYTHONHOME (each environment has its own prefix) and without PYTHONDONTWRITEBYTECODE: the
    environments are installed without bytecode (uv compiles on first import), so a machine-wide ban on
    writing it would make every start compile torch, vLLM and Prefect from source again (measured on 2
    cores: lm-eval's imports 13.5 s from source, 4.2 s from bytecode)."""
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def repo_root() -> Path:
    """The loraops source checkout (where .venvs/ lives); overridable with LORAOPS_HOME."""
    env = os.environ.get("LORAOPS_HOME")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class PythonEnv:
    name: str
    prefix: Path

    @property
    def bin(self) -> Path:
        return self.prefix / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    def exists(self) -> bool:
        return self.python.exists()

    def service_vars(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The variables a long-running service of this environment is started with (offline), without
        the caller's environment: what ``ServiceSpec.env`` holds, so that it fingerprints the service."""
        return {"VIRTUAL_ENV": str(self.prefix), **OFFLINE_ENV, **(extra or {})}

    def environ(self, extra: Mapping[str, str] | None = None, *, offline: bool = True) -> dict[str, str]:
        env = inherited_environ()
        # Axolotl execs `accelerate` by name, so the env's bin/ must come first on PATH.
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.prefix)
        if offline:
            env.update(OFFLINE_ENV)
        if extra:
            env.update(extra)
        return env


def env_prefix(name: str) -> Path:
    override = os.environ.get(f"LORAOPS_{name.upper()}_ENV")
    if override:
        return Path(override).resolve()
    return repo_root() / ".venvs" / name


def trainer_env() -> PythonEnv:
    return PythonEnv("trainer", env_prefix("trainer"))


def server_env() -> PythonEnv:
    return PythonEnv("server", env_prefix("server"))


def control_env() -> PythonEnv:
    return PythonEnv("control", Path(sys.prefix))


def require(env: PythonEnv) -> PythonEnv:
    if not env.exists():
        raise StageError(
            f"the {env.name} environment is missing at {env.prefix}",
            hint="run `make envs` to create it",
        )
    return env


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the parent dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_process_group(proc: subprocess.Popen[Any], grace_s: float = 10.0) -> None:
    """SIGTERM the child's whole process group, then SIGKILL what is left after ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (e.g. accelerate's workers)


def describe_exit(code: int) -> str:
    """``exit code 1`` or ``killed by signal 9 (SIGKILL)``."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-code} ({name})"
    return f"exit code {code}"


def run_streaming(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
    log_file: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    on_start: Callable[[subprocess.Popen[str]], None] | None = None,
    what: str = "command",
) -> None:
    """Run ``cmd``, passing each output line to ``on_line`` and appending it to ``log_file``.

    ``on_start`` gets the process once it runs (for a caller that may stop it from another thread).

    The command runs in its own process group and dies with this process: when the caller is
    interrupted (Ctrl-C, a cancelled flow run's SIGTERM, an exception in ``on_line``) the whole group
    is stopped before the exception goes on, and a SIGKILL of this process reaches the child through
    PR_SET_PDEATHSIG. Raises StageError naming the log file and the last lines when the command fails.
    """
    tail: list[str] = []
    log = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log = log_file.open("a", encoding="utf-8")
    try:
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            cwd=cwd,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        try:
            if on_start is not None:
                on_start(proc)
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                if log is not None:
                    log.write(raw)
                tail.append(line)
                del tail[:-20]
                if on_line is not None:
                    on_line(line)
            code = proc.wait()
        except BaseException:
            stop_process_group(proc)
            raise
    finally:
        if log is not None:
            log.close()
    if code != 0:
        last = " | ".join(t.strip() for t in tail[-3:] if t.strip())
        where = f"; full log: {log_file}" if log_file else ""
        raise StageError(f"{what} failed with {describe_exit(code)}: {last}{where}")
