"""Applying a passed gate: move the champion alias and wait until the server serves the new version."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

from loraops.errors import StageError

if TYPE_CHECKING:
    from loraops.config import Params
    from loraops.registry.tracking import ModelVersionInfo, Registry
    from loraops.stack.local import StackUrls


def sync_status(sync_url: str, token: str, model: str) -> dict[str, Any]:
    """The sync hook's /status of ``model`` (desired vs actual per replica), or {} when it does not
    answer or does not serve ``model``."""
    url = f"{sync_url}/status?model={urllib.parse.quote(model)}"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 (our loopback hook)
            data = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def promote_and_wait(
    registry: Registry,
    params: Params,
    version: ModelVersionInfo,
    urls: StackUrls,
    token: str,
    timeout_s: float = 120.0,
) -> str:
    """Point the champion alias at ``version``; return the adapter path the server now serves.

    The alias sync hook does the loading (the same path an engineer's alias move in the MLflow UI
    takes). If the server does not pick the version up in time, the alias is moved back, so the
    registry never names a champion that is not what applications get.
    """
    previous = registry.champion()
    registry.set_champion(version.version)
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = sync_status(urls.sync, token, params.registry.model_name)
        served = str(last.get("served_version")) == str(version.version) and last.get("served_path")
        if served and last.get("in_sync"):  # every replica, not only the first
            return str(last["served_path"])
        refused = ((last.get("aliases") or {}).get(params.registry.champion_alias) or {}).get("refused")
        if refused and str(refused.get("version")) == str(version.version):
            last = {"error": f"the sync hook refused it ({refused.get('kind')}): {refused.get('reason')}"}
            break
        time.sleep(0.5)
    if previous is not None:
        registry.set_champion(previous.version)
    else:
        registry.clear_champion()
    error = last.get("error") or "no answer from the alias sync hook"
    raise StageError(
        f"version {version.version} passed the gate but the server did not serve it: {error}",
        hint=f"the alias was moved back; see .loraops/logs/sync.log and {urls.sync}/status",
    )


def previous_version(history: list[str], current: str | None) -> str | None:
    """The version an alias served before ``current``: the newest history entry that differs from it."""
    return next((v for v in reversed(history) if v != current), None)


def apply_decision(
    registry: Registry,
    params: Params,
    version: ModelVersionInfo,
    passed: bool,
    urls: StackUrls,
    token: str = "",
    timeout_s: float = 120.0,
) -> tuple[str | None, str | None]:
    """What a decision does: a pass moves champion (and waits until it is served) when gate.auto_promote,
    else the challenger alias; a refusal moves nothing. Returns (alias moved, served adapter path).
    ``token`` is the sync hook's (its /status tells when the version is served)."""
    if not passed:
        return None, None
    if params.gate.auto_promote:
        served = promote_and_wait(registry, params, version, urls, token, timeout_s=timeout_s)
        return params.registry.champion_alias, served
    registry.set_alias(params.registry.challenger_alias, version.version)
    return params.registry.challenger_alias, None
