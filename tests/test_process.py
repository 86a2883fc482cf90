import os
import socket
import sys
from pathlib import Path

import pytest

from loraops.errors import StackError
from loraops.services import ServiceManager, ServiceSpec, free_port, http_ok, port_is_free


def _http_server_spec(port: int) -> ServiceSpec:
    return ServiceSpec(
        name="web",
        command=[sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        port=port,
        health_url=f"http://127.0.0.1:{port}/",
        start_timeout_s=30,
        config_key="stack.web_port",
    )


@pytest.mark.e2e  # real processes and ports
def test_start_is_idempotent_and_stop_kills_the_group(tmp_path: Path):
    manager = ServiceManager(tmp_path)
    port = free_port()
    first = manager.start(_http_server_spec(port))
    try:
        assert http_ok(f"http://127.0.0.1:{port}/")
        again = manager.start(_http_server_spec(port))
        assert again.pid == first.pid
        assert [s.name for s in manager.running()] == ["web"]
    finally:
        assert manager.stop("web")
    assert port_is_free(port)
    assert manager.get("web") is None
    assert not manager.stop("web")


@pytest.mark.e2e  # real processes and ports
def test_a_service_running_with_other_settings_is_restarted(tmp_path: Path):
    # e.g. vLLM still serving the previous base model after params.yaml changed
    manager = ServiceManager(tmp_path)
    port = free_port()
    first = manager.start(_http_server_spec(port))
    try:
        changed = _http_server_spec(port)
        changed.command = [*changed.command, "--directory", str(tmp_path)]
        second = manager.start(changed)
        assert second.pid != first.pid and not first.alive()
        assert manager.start(changed).pid == second.pid
    finally:
        manager.stop("web")
    assert port_is_free(port)


@pytest.mark.e2e  # real processes and ports
def test_the_callers_environment_is_not_a_reason_to_restart(tmp_path: Path, monkeypatch):
    events: list[str] = []
    manager = ServiceManager(tmp_path, on_event=events.append)
    port = free_port()
    spec = _http_server_spec(port)
    spec.env = {"LORAOPS_SERVICE_SETTING": "1"}
    first = manager.start(spec)
    try:
        monkeypatch.setenv("SOME_UNRELATED_VARIABLE", "changed")
        monkeypatch.setenv("PATH", "/nowhere:" + os.environ["PATH"])
        assert manager.start(spec).pid == first.pid
        assert events == ["starting web"]
        spec.env = {"LORAOPS_SERVICE_SETTING": "2"}  # the service's own variable: a real change
        second = manager.start(spec)
        assert second.pid != first.pid
        assert events[-1].startswith("restarting web: its settings changed")
    finally:
        manager.stop("web")


@pytest.mark.e2e  # real processes and ports
def test_busy_port_gives_a_clear_error_naming_the_key(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(StackError, match=rf"port {port} is already in use.*stack.web_port"):
            ServiceManager(tmp_path).start(_http_server_spec(port))
    assert not (tmp_path / "pids" / "web.json").exists()


@pytest.mark.e2e  # real processes and ports
def test_a_service_that_dies_at_start_is_reported_with_its_log(tmp_path: Path):
    spec = ServiceSpec(
        name="broken",
        command=[sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
        port=free_port(),
        health_url="http://127.0.0.1:1/",
        start_timeout_s=20,
    )
    with pytest.raises(StackError, match="exited with code 3"):
        ServiceManager(tmp_path).start(spec)
    assert "boom" in (tmp_path / "logs" / "broken.log").read_text()
