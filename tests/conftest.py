"""Shared fixtures and the suite's rules.

Markers (pyproject.toml): ``e2e`` runs real servers of the stack, ``stand_in`` replaces one of them by
a named stand-in, ``slow`` takes more than a few seconds without any server. Each marker has a default
timeout (``TIMEOUTS``), so a hung service fails one named test, with the tails of the service logs the
test registered (``service_logs``), instead of stalling the whole run.

``make test-fast`` sets ``LORAOPS_TEST_FAST=1``: the unmarked tests then run with a guard that fails any
of them that opens a server port or starts a service.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraops.services import FORBID_SERVICES_ENV, free_port

ROOT = Path(__file__).resolve().parents[1]
# What the tests start compiles its imports once, not at every start (see loraops.envs.inherited_environ).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
# Base models are content-addressed, so every test session of a checkout shares one cache: built once per
# checkout, not once per session. It is the checkout's own, not the user's (~/.cache/loraops), so that a
# fresh clone's suite measures the builds and never reads what another checkout's code wrote.
SHARED_CACHE = ROOT / ".loraops" / "cache"
os.environ["LORAOPS_CACHE"] = str(SHARED_CACHE)
# The loop on the tiny model the project builds: what the test workspaces start from.
TINY_PARAMS = ROOT / "examples" / "tiny" / "params.yaml"
# The demo's loop, on a real pretrained model: SmolLM2-135M-Instruct.
SMOLLM2_PARAMS = ROOT / "params.yaml"

# Default timeout per marker, in seconds (the first marker found wins; a test may set its own
# @pytest.mark.timeout). e2e covers a session stack's start on a fresh clone: the base model is built
# then (minutes), inside the first test that needs it.
TIMEOUTS = {"e2e": 1800, "stand_in": 300, "slow": 900}
UNMARKED_TIMEOUT = 120
FAST_MODE = os.environ.get("LORAOPS_TEST_FAST") == "1"
_LOG_DIRS: list[Path] = []
LOG_TAIL_LINES = 40


def service_logs(log_dir: Path) -> Path:
    """Register a directory of service logs: a failing or timed-out test shows the tail of each."""
    _LOG_DIRS.append(Path(log_dir))
    return log_dir


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("timeout") is not None:
            continue
        limit = next((t for m, t in TIMEOUTS.items() if item.get_closest_marker(m)), UNMARKED_TIMEOUT)
        item.add_marker(pytest.mark.timeout(limit))
    # The tests that need the built base model go after the others: it is built in the background
    # meanwhile. Those that need the session's demo stack go last: the demo runs in the background too
    # (tests/fixtures_stack.py), beside the base-model tests that need no stack of its.
    items.sort(key=_phase)


def _phase(item: pytest.Item) -> int:
    """0: needs no built model; 1: needs the built model; 2: needs the session's demo stack."""
    if "demo_stack" in getattr(item, "fixturenames", ()):
        return 2
    return 1 if item.get_closest_marker("base_model") is not None else 0


# The base model build is one thread for minutes (basemodel/build.py): on 2 cores it runs beside the
# tests that do not need it instead of before the first test that does. build_base_model's file lock
# makes any later caller (a test, `loraops demo`) wait for it and then find it built.
_background_build: subprocess.Popen[bytes] | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    global _background_build
    if FAST_MODE or session.config.option.collectonly:
        return
    if not any(item.get_closest_marker("base_model") for item in session.items):
        return
    from loraops.basemodel.build import is_complete
    from loraops.basemodel.recipe import DEFAULT_RECIPE

    models = SHARED_CACHE / "models"
    if is_complete(models / DEFAULT_RECIPE.dir_name()):
        return
    models.mkdir(parents=True, exist_ok=True)
    code = (
        "import sys; from pathlib import Path; from loraops.basemodel.build import build_base_model; "
        "from loraops.basemodel.recipe import DEFAULT_RECIPE; "
        "build_base_model(DEFAULT_RECIPE, Path(sys.argv[1]))"
    )
    with (models / "background-build.log").open("ab") as log:
        _background_build = subprocess.Popen(
            [sys.executable, "-c", code, str(models)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _background_build is not None and _background_build.poll() is None:
        os.killpg(_background_build.pid, signal.SIGTERM)
        _background_build.wait(timeout=60)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    if report.failed and _LOG_DIRS:
        for log in sorted({p for d in _LOG_DIRS if d.exists() for p in d.glob("*.log")}):
            lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            report.sections.append((f"service log {log}", "\n".join(lines)))
    return report


SERVICE_WORDS = ("vllm", "mlflow", "prefect", "moto_server", "postgres", "uvicorn")
_guard = pytest.MonkeyPatch()


def _forbid_services(test: str) -> None:
    import socket

    def no_listen(self: socket.socket, *args: object) -> None:
        pytest.fail(f"{test} opens a server port: mark it e2e (real server) or stand_in", pytrace=False)

    real_popen_init = subprocess.Popen.__init__

    def no_service(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        text = " ".join(str(a) for a in args) if isinstance(args, list | tuple) else str(args)
        if any(word in text for word in SERVICE_WORDS):
            pytest.fail(f"{test} starts a service ({text[:120]}): mark it e2e or stand_in", pytrace=False)
        real_popen_init(self, args, *rest, **kwargs)

    _guard.setattr(socket.socket, "listen", no_listen)
    _guard.setattr(subprocess.Popen, "__init__", no_service)
    _guard.setenv(FORBID_SERVICES_ENV, test)  # ServiceManager refuses, in subprocesses too


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Any:
    """In `make test-fast`, an unmarked test that opens a server port or starts a service fails, whether
    the test itself or one of its fixtures (a session server included) does it."""
    if FAST_MODE and not any(item.get_closest_marker(m) for m in TIMEOUTS):
        _forbid_services(item.nodeid)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    try:
        return (yield)
    finally:
        _guard.undo()


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def make_workspace(dest: Path, overrides: dict | None = None, profile: Path = TINY_PARAMS) -> Path:
    """A fresh loraops project (the tiny model's ``profile`` unless told): params.yaml (free ports),
    dvc.yaml, presets; a git repo with one commit."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "axolotl_configs", dest / "axolotl_configs")
    shutil.copy2(ROOT / "dvc.yaml", dest / "dvc.yaml")
    params = yaml.safe_load(profile.read_text())
    params["serving"]["port"] = free_port()
    params["stack"].update(
        mlflow_port=free_port(), prefect_port=free_port(), sync_port=free_port(), worker_port=free_port()
    )
    for section, values in (overrides or {}).items():
        params.setdefault(section, {}).update(values)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / ".gitignore").write_text(".loraops/\n")
    _git(dest, "init", "-q")
    _git(dest, "-c", "user.email=t@example.com", "-c", "user.name=t", "add", "-A")
    _git(dest, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "workspace")
    return dest


def run_cli(
    ws: Path, *args: str, timeout: float = 1800, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`loraops --workspace WS ARGS` in a subprocess (``env`` over this process's environment)."""
    env = dict(os.environ, LORAOPS_CACHE=str(SHARED_CACHE), PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "loraops.cli", "--workspace", str(ws), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def registered_version(output: str) -> str:
    """The version number `loraops train` or `loraops register` printed."""
    found = re.search(r"registered \S+ version (\d+)", output)
    assert found is not None, output[-3000:]
    return found.group(1)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A throwaway tiny Llama and two LoRA adapters with different outputs (tests/fixtures_tiny_model.py)."""
    from fixtures_tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))
