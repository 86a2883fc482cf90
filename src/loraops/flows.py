"""Finds the Prefect flows of flows/ (kept as plain files, Prefect's `path/file.py:flow` convention)."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

from loraops.envs import repo_root
from loraops.errors import StageError


def load_flow(name: str, attr: str | None = None) -> Any:
    """The flow ``attr`` (default: ``name``) of ``flows/<name>.py``."""
    path = repo_root() / "flows" / f"{name}.py"
    if not path.exists():
        raise StageError(f"flow file {path} not found")
    module_name = f"loraops_flows_{name}"
    if module_name in sys.modules:
        return getattr(sys.modules[module_name], attr or name)
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return getattr(module, attr or name)
