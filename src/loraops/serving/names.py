"""The names a served model answers to, and where its versions live on disk. Pure functions.

* ``<model>``: the stable name, always the version the ``champion`` alias points at;
* ``<model>-<alias>``: the stable name of another alias (``support-triage-challenger``);
* ``<model>-v<N>``: one registered version, immutable (apps pin a version; the evaluation uses it).

A registered model's name becomes a served name and a directory under the adapter cache, so it is
checked before either is made: letters, digits, ``.``, ``_`` and ``-``, starting and ending with a
letter or digit, no ``..``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from loraops.errors import ConfigError

_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?")
_VERSION = re.compile(r"[1-9][0-9]{0,9}")


def check_model_name(name: str) -> str:
    """``name`` when it is safe as a served name and a directory name; ConfigError saying why otherwise."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"the registered model name {name!r} cannot be served: it becomes a model name on the server "
            "and a directory of the adapter cache",
            hint="use 1-64 letters, digits, '.', '_' or '-', starting and ending with a letter or digit "
            "(no '/', no '..'); set registry.model_name in params.yaml",
        )
    return name


def check_version(version: str) -> str:
    """``version`` when it is a registry version number (1, 2, ...); ConfigError otherwise."""
    if not _VERSION.fullmatch(str(version)):
        raise ConfigError(f"{version!r} is not a model version number", hint="versions are 1, 2, 3, ...")
    return str(version)


def version_name(model: str, version: str) -> str:
    """The immutable served name of one registered version: ``<model>-v<N>``."""
    return f"{check_model_name(model)}-v{check_version(version)}"


def stable_name(model: str, alias: str, champion_alias: str = "champion") -> str:
    """The stable served name of an alias: ``<model>`` for the champion, ``<model>-<alias>`` otherwise."""
    check_model_name(model)
    if alias == champion_alias:
        return model
    if not _NAME.fullmatch(alias) or ".." in alias:
        raise ConfigError(
            f"the alias {alias!r} cannot be part of a served name", hint="use letters and digits"
        )
    return f"{model}-{alias}"


def version_dir(adapters_dir: Path, model: str, version: str) -> Path:
    """Where version ``version`` of ``model`` is kept for the server: ``<adapters_dir>/<model>/v<N>``."""
    root = adapters_dir.resolve()
    path = (root / check_model_name(model) / f"v{check_version(version)}").resolve()
    if not path.is_relative_to(root):  # unreachable after the checks above; kept as the last line of defence
        raise ConfigError(f"{path} is outside the adapter cache {root}")
    return path


@dataclass(frozen=True)
class HostedModel:
    """A registered model as the serving stack sees it: its name and its aliases, the champion first."""

    name: str
    champion_alias: str = "champion"
    aliases: tuple[str, ...] = ("champion", "challenger")

    def stable_names(self) -> list[str]:
        """The stable served name of every alias."""
        return [stable_name(self.name, a, self.champion_alias) for a in self.aliases]

    def owns(self, served_name: str) -> bool:
        """True when ``served_name`` is one of this model's names (stable or ``-v<N>``), exactly."""
        if served_name in self.stable_names():
            return True
        prefix = f"{self.name}-v"
        return served_name.startswith(prefix) and bool(_VERSION.fullmatch(served_name[len(prefix) :]))

    def clashes_with(self, other: HostedModel) -> str | None:
        """Why the two models' served names would overlap on one server, or None when they do not."""
        for a, b in ((self, other), (other, self)):
            for name in a.stable_names():
                if b.owns(name):
                    return f"{a.name!r} serves {name!r}, a name of {b.name!r}"
        return None
