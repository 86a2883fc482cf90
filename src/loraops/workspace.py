"""Where a loraops project keeps its files.

A *workspace* is a git repository holding ``params.yaml``, ``dvc.yaml`` and ``axolotl_configs/``.
Everything loraops writes at run time lives under ``<workspace>/.loraops/`` (git-ignored), except what is
keyed by content and so shared by every workspace of the user: base models (built or converted), the
base model's self-replay answers and general scores. That cache is ``LORAOPS_CACHE``, else
``$XDG_CACHE_HOME/loraops``, else ``~/.cache/loraops``; its writers lock against each other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def from_env(cls, root: Path | str | None = None) -> Workspace:
        chosen = root or os.environ.get("LORAOPS_WORKSPACE") or Path.cwd()
        return cls(Path(chosen).resolve())

    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    @property
    def state(self) -> Path:
        return self.root / ".loraops"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def runs(self) -> Path:
        """Scratch space of pipeline runs (rendered configs, adapters before upload, reports)."""
        return self.state / "runs"

    @property
    def cache(self) -> Path:
        return user_cache()

    @property
    def models(self) -> Path:
        return self.cache / "models"

    @property
    def serving_adapters(self) -> Path:
        """Local copies of registered adapters, where the vLLM server reads them from."""
        return self.state / "serving" / "adapters"

    def ensure(self) -> None:
        for path in (self.state, self.logs, self.runs, self.models, self.serving_adapters):
            path.mkdir(parents=True, exist_ok=True)


def user_cache() -> Path:
    """The user-level cache of content-keyed artifacts (base models, replay answers, base scores)."""
    env = os.environ.get("LORAOPS_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "loraops"
