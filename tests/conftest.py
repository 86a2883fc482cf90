"""Shared fixtures. Tests that need the real stack are marked e2e and start it themselves."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from loraops.services import free_port

ROOT = Path(__file__).resolve().parents[1]
# The base model is content-addressed by its recipe, so tests share the repo's cache with `make demo`:
# built once per checkout, not once per test session.
SHARED_CACHE = ROOT / ".loraops" / "cache"


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def make_workspace(dest: Path, overrides: dict | None = None) -> Path:
    """A fresh loraops project: params.yaml (free ports), dvc.yaml, presets; a git repo with one commit."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "axolotl_configs", dest / "axolotl_configs")
    shutil.copy2(ROOT / "dvc.yaml", dest / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
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


def run_cli(ws: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LORAOPS_CACHE=str(SHARED_CACHE), PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "loraops.cli", "--workspace", str(ws), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Path]:
    ws = make_workspace(tmp_path / "ws")
    yield ws
    run_cli(ws, "down", timeout=120)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A throwaway tiny Llama and two LoRA adapters with different outputs (tests/fixtures_tiny_model.py)."""
    from fixtures_tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))
