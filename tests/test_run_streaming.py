"""A training subprocess dies with the run that started it (cancelled flow, Ctrl-C, kill -9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from loraops.envs import describe_exit, run_streaming
from loraops.errors import StageError

# A child that says its pid, then runs (like Axolotl) until someone stops it.
CHILD = "import os, time; print(os.getpid(), flush=True); time.sleep(600)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as dead
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def _wait_dead(pid: int, timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_an_exception_in_the_caller_stops_the_child_first() -> None:
    pids: list[int] = []

    def on_line(line: str) -> None:
        pids.append(int(line))
        raise KeyboardInterrupt  # Ctrl-C, or Prefect's TerminationSignal on a cancelled flow run

    with pytest.raises(KeyboardInterrupt):
        run_streaming([sys.executable, "-c", CHILD], env=dict(os.environ), on_line=on_line)
    assert pids and not _alive(pids[0])  # already gone when the exception reaches the caller


@pytest.mark.parametrize("parent_signal", [signal.SIGKILL, signal.SIGTERM])
def test_the_child_dies_with_its_parent_even_on_sigkill(
    tmp_path: Path, parent_signal: signal.Signals
) -> None:
    pid_file = tmp_path / "child.pid"
    parent = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from loraops.envs import run_streaming
        run_streaming([sys.executable, "-c", {CHILD!r}], env=dict(os.environ),
                      on_line=lambda line: Path({str(pid_file)!r}).write_text(line))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", parent])
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline and proc.poll() is None, "the child never started"
        time.sleep(0.1)
    child = int(pid_file.read_text())
    proc.send_signal(parent_signal)
    proc.wait(timeout=30)
    assert _wait_dead(child), f"child {child} outlived its parent ({parent_signal.name})"


def test_a_killed_child_is_reported_by_signal_name() -> None:
    assert describe_exit(-9) == "killed by signal 9 (SIGKILL)" and describe_exit(3) == "exit code 3"
    with pytest.raises(StageError, match=r"killed by signal 9 \(SIGKILL\)"):
        run_streaming(
            [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
            env=dict(os.environ),
            what="trainer",
        )
