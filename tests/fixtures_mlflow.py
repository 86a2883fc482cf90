"""A real MLflow server for the registry and sync tests, started once per session.

Test modules load this with ``pytest_plugins = ["fixtures_mlflow"]``: loaded as a plugin, the session
fixture exists once however many modules ask for it (one ~20 s server start, not one per module).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from loraops.registry.server import mlflow_service_spec
from loraops.services import ServiceManager, free_port


@dataclass(frozen=True)
class MlflowServer:
    url: str
    state_dir: Path


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    state = tmp_path_factory.mktemp("mlflow-state")
    manager = ServiceManager(state)
    port = free_port()
    manager.start(mlflow_service_spec(state, port))
    try:
        yield MlflowServer(f"http://127.0.0.1:{port}", state)
    finally:
        manager.stop("mlflow")
