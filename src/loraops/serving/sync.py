"""The alias sync hook: keeps every vLLM replica serving what the registry's aliases point at.

For one registered model it serves, on each replica (``serving/README.md`` has the whole contract):

* ``<model>`` (the stable name) = the version ``champion`` points at; ``<model>-challenger`` = the
  version ``challenger`` points at; ``<model>-v<N>`` = each of those versions under its immutable name.
  A version that no alias wants any more keeps its ``-v<N>`` name for ``grace_s``, then is unloaded.
* A version reaches a stable name only when the gate passed it or a person set the override tag
  (``policy.py``), and only after it answered its canary under its version name. A refused version is
  tagged on the MLflow version (``loraops.serving.refused``), counted, and shown in ``/status``; what
  the stable name served before keeps serving.
* An alias that is deleted leaves its stable name serving the last version, with a warning in
  ``/status`` (applications keep working; an engineer sees that nothing is pinned any more).

MLflow calls ``POST /hooks/mlflow`` when an alias is set or deleted. The hook does not trust the
event's version: it asks the registry where the aliases point *now*, so retried or reordered deliveries
converge on the same state. The same reconcile runs at start-up, every ``reconcile_interval_s``, and at
once when a replica is seen drifting from the desired state (a restarted vLLM has no adapters), which
is checked every ``watch_interval_s``.

Run it with ``python -m loraops.serving.sync --port ... --tracking-uri ... --vllm-url ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from loraops.files import read_or_create_secret
from loraops.services import ServiceSpec, http_url
from loraops.serving.names import HostedModel, stable_name, version_dir, version_name
from loraops.serving.policy import (
    CANARY_TAG,
    GATE_TAG,
    OVERRIDE_TAG,
    REFUSED_TAG,
    Canary,
    canary_of,
    serve_permission,
)

if TYPE_CHECKING:  # importing the registry adapter imports mlflow, which is slow
    from prometheus_client import CollectorRegistry

    from loraops.registry.tracking import ModelVersionInfo

HOOK_PATH = "/hooks/mlflow"
SIGNATURE_TOLERANCE_S = 300.0
MAX_BODY_BYTES = 1 << 20
BODY_TIMEOUT_S = 5.0
ADAPTER_MARKER = "adapter_config.json"

# -- pure parts -------------------------------------------------------------------------------------------


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's signature: ``v1,`` + base64 HMAC-SHA256 of ``{delivery_id}.{timestamp}.{body}``."""
    mac = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")


def verify_signature(
    secret: str,
    delivery_id: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    now: float | None = None,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
) -> bool:
    """True when ``signature`` (one or more space-separated ``v1,<b64>``) signs this delivery.

    With ``now`` given, a timestamp more than ``tolerance_s`` away from it is refused as well (replay).
    """
    if not secret or not delivery_id or not timestamp or not signature:
        return False
    if now is not None:
        try:
            if abs(now - float(timestamp)) > tolerance_s:
                return False
        except ValueError:
            return False
    expected = sign(secret, delivery_id, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in signature.split())


class DeliveryLog:
    """Delivery ids already acted on, kept as long as their signature could still be replayed.

    Only a delivery that was handled is remembered: MLflow retries a failed one (5xx) with the same id.
    """

    def __init__(self, keep_s: float = 2 * SIGNATURE_TOLERANCE_S) -> None:
        self.keep_s = keep_s
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def seen(self, delivery_id: str, now: float) -> bool:
        """True when ``delivery_id`` was handled within ``keep_s`` of ``now``."""
        with self._lock:
            for old, at in list(self._seen.items()):
                if now - at > self.keep_s:
                    del self._seen[old]
            return delivery_id in self._seen

    def remember(self, delivery_id: str, now: float) -> None:
        with self._lock:
            self._seen[delivery_id] = now


@dataclass(frozen=True)
class AliasEvent:
    name: str
    alias: str
    version: str
    action: Literal["created", "deleted"] = "created"


def parse_alias_event(body: bytes) -> AliasEvent | None:
    """The alias created/deleted event in an MLflow webhook body, or None for anything else."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    action = doc.get("action")
    if doc.get("entity") != "model_version_alias" or action not in ("created", "deleted"):
        return None
    data = doc.get("data")
    if not isinstance(data, dict):
        return None
    fields = [data.get(k) for k in ("name", "alias", "version")]
    if action == "deleted" and fields[2] is None:
        fields[2] = ""
    if not all(isinstance(f, str | int) for f in fields) or not all(str(f) for f in fields[:2]):
        return None
    name, alias, version = (str(f) for f in fields)
    return AliasEvent(name=name, alias=alias, version=version, action=action)


@dataclass(frozen=True)
class TagEvent:
    name: str
    version: str
    key: str
    value: str


def parse_tag_event(body: bytes) -> TagEvent | None:
    """The model-version tag set event in an MLflow webhook body, or None for anything else."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("entity") != "model_version_tag" or doc.get("action") != "set":
        return None
    data = doc.get("data")
    if not isinstance(data, dict):
        return None
    fields = [data.get(k) for k in ("name", "version", "key")]
    if not all(isinstance(f, str | int) and str(f) for f in fields):
        return None
    name, version, key = (str(f) for f in fields)
    return TagEvent(name=name, version=version, key=key, value=str(data.get("value") or ""))


Action = Literal["loaded", "unchanged", "ignored", "no-target", "refused", "failed"]
_RANK: dict[str, int] = {"failed": 5, "refused": 4, "loaded": 3, "unchanged": 2, "no-target": 1, "ignored": 0}


@dataclass(frozen=True)
class SyncResult:
    action: Action
    at: str
    trigger: str
    version: str | None = None  # the version the champion alias points at (None: unknown or unset)
    path: str | None = None
    error: str | None = None
    details: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.action not in ("failed",)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "details": list(self.details), "ok": self.ok}


@dataclass(frozen=True)
class Refusal:
    version: str
    alias: str
    kind: Literal["gate", "canary"]
    reason: str
    at: str


# -- ports ------------------------------------------------------------------------------------------------


class AdapterSource(Protocol):
    """What the hook needs from the registry (``loraops.registry.tracking.Registry``)."""

    def version_by_alias(self, alias: str) -> ModelVersionInfo | None: ...

    def get_version(self, version: str) -> ModelVersionInfo: ...

    def download_adapter(self, version: str, dest: Path) -> Path: ...

    def tag_version(self, version: str, tags: dict[str, Any]) -> None: ...

    def push_alias_history(self, alias: str, version: str, keep: int = 50) -> list[str]: ...


class ServingBackend(Protocol):
    """What the hook needs from one inference server (``loraops.serving.vllm.VllmClient``)."""

    base_url: str

    def load_adapter(self, name: str, path: str) -> Any: ...

    def unload_adapter(self, name: str) -> None: ...

    def adapters(self) -> dict[str, str]: ...

    def complete(self, name: str, request: str | list[dict[str, str]], max_tokens: int) -> str: ...


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _is_adapter(path: Path) -> bool:
    return (path / ADAPTER_MARKER).is_file()


def _describe(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SyncMetrics:
    """The hook's Prometheus metrics (one registry per hook, exposed at ``GET /metrics``)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry: CollectorRegistry = CollectorRegistry()
        r = self.registry
        self.swaps = Counter(
            "loraops_sync_swaps", "Stable-name switches done", ["model", "alias"], registry=r
        )
        self.refusals = Counter(
            "loraops_sync_refusals",
            "Versions refused for a stable name",
            ["model", "alias", "kind"],
            registry=r,
        )
        self.load_failures = Counter(
            "loraops_sync_load_failures",
            "Reconciles that failed (download, load, server)",
            ["model"],
            registry=r,
        )
        self.swap_seconds = Histogram(
            "loraops_sync_swap_seconds",
            "Time to switch a stable name on one replica (version load, canary, switch)",
            ["model"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.reconcile_lag = Gauge(
            "loraops_sync_reconcile_lag_seconds",
            "Seconds from a drift being noticed (event, watch, start) to every replica serving it again",
            ["model"],
            registry=r,
        )
        self.in_sync = Gauge(
            "loraops_sync_in_sync",
            "1 when the replica serves the desired state",
            ["model", "replica"],
            registry=r,
        )
        self.deliveries = Counter(
            "loraops_sync_deliveries", "Webhook deliveries by outcome", ["outcome"], registry=r
        )


class ModelSync:
    """Keeps ``replicas`` serving the versions that ``aliases`` of one registered model point at."""

    def __init__(
        self,
        registry: AdapterSource,
        replicas: Sequence[ServingBackend],
        adapters_dir: Path,
        model_name: str,
        *,
        champion_alias: str = "champion",
        aliases: Sequence[str] = ("champion", "challenger"),
        grace_s: float = 300.0,
        warm_versions: int = 0,
        metrics: SyncMetrics | None = None,
        clock: Callable[[], str] = _utc_now,
    ) -> None:
        self.registry = registry
        self.replicas = list(replicas)
        self.model_name = model_name
        self.champion_alias = champion_alias
        self.aliases = tuple(dict.fromkeys([champion_alias, *aliases]))
        self.hosted = HostedModel(model_name, champion_alias, self.aliases)
        self.adapters_dir = adapters_dir.resolve()
        self.model_dir = self.adapters_dir / model_name
        self.grace_s = grace_s
        self.warm_versions = warm_versions
        self.metrics = metrics or SyncMetrics()
        self._clock = clock
        self._lock = threading.Lock()  # one reconcile at a time
        self._state_lock = threading.Lock()  # status() must not wait for a download
        self.last: SyncResult | None = None
        self.last_failure: SyncResult | None = None
        self.desired: dict[str, str] = {}  # served name -> adapter path, from the last reconcile
        self.warnings: dict[str, str] = {}  # alias -> warning
        self.refusals: dict[str, Refusal] = {}  # alias -> the refusal standing for it
        self._refused_keys: set[tuple[str, str, str]] = set()  # (version, kind, reason) already recorded
        # (version, canary) -> why it failed: the adapter never changes, but a person may set a new canary
        self._canary_failed: dict[tuple[str, str], str] = {}
        self._canary_passed: set[tuple[str, str, str]] = (
            set()
        )  # (replica, adapter dir, canary) since its load
        self._warm: dict[str, None] = {}  # versions kept loaded under their version names, oldest first
        self._unwanted_since: dict[str, float] = {}  # served version name -> when no alias wanted it
        self._history_last: dict[str, str] = {}  # alias -> the last version written to its history
        self._drift_since: float | None = None

    def version_dir(self, version: str) -> Path:
        return version_dir(self.adapters_dir, self.model_name, version)

    def stable_name(self, alias: str) -> str:
        return stable_name(self.model_name, alias, self.champion_alias)

    # -- reconcile --------------------------------------------------------------------------------------

    def reconcile(self, trigger: str = "reconcile") -> SyncResult:
        """Make every reachable replica serve the desired state; a no-op when it already does."""
        with self._lock:
            if self._drift_since is None:
                self._drift_since = time.monotonic()
            try:
                targets = {alias: self.registry.version_by_alias(alias) for alias in self.aliases}
            except Exception as exc:
                return self._record(SyncResult("failed", self._clock(), trigger, error=_describe(exc)))
            champion = targets[self.champion_alias]
            served: dict[int, dict[str, str]] = {}
            errors: list[str] = []
            for i, replica in enumerate(self.replicas):
                try:
                    served[i] = replica.adapters()
                except Exception as exc:
                    errors.append(f"{replica.base_url}: {_describe(exc)}")
                    self.metrics.in_sync.labels(self.model_name, replica.base_url).set(0)
            desired: dict[str, str] = {}
            actions: list[str] = []
            outcome: Action = "no-target" if champion is None else "unchanged"
            warnings: dict[str, str] = {}
            for alias, target in targets.items():
                try:
                    done, state = self._reconcile_alias(alias, target, served, desired, warnings)
                except Exception as exc:
                    errors.append(f"{alias}: {_describe(exc)}")
                    continue
                actions += done
                if _RANK[state] > _RANK[outcome]:
                    outcome = state
            self._trim_warm(desired)
            self._retire_version_names(served, desired)
            self._prune(served, desired)
            if errors:
                self.metrics.load_failures.labels(self.model_name).inc()
                outcome = "failed"
            else:
                for replica in self.replicas:
                    self.metrics.in_sync.labels(self.model_name, replica.base_url).set(1)
                self.metrics.reconcile_lag.labels(self.model_name).set(time.monotonic() - self._drift_since)
                self._drift_since = None
            with self._state_lock:
                self.desired = desired
                self.warnings = warnings
            stable = self.stable_name(self.champion_alias)
            return self._record(
                SyncResult(
                    outcome,
                    self._clock(),
                    trigger,
                    champion.version if champion else None,
                    desired.get(stable),
                    "; ".join(errors) or None,
                    tuple(
                        actions
                        + [f"refused {r.alias} v{r.version}: {r.reason}" for r in self.refusals.values()]
                    ),
                )
            )

    def _reconcile_alias(
        self,
        alias: str,
        target: ModelVersionInfo | None,
        served: dict[int, dict[str, str]],
        desired: dict[str, str],
        warnings: dict[str, str],
    ) -> tuple[list[str], Action]:
        stable = self.stable_name(alias)
        current = {i: names.get(stable) for i, names in served.items()}
        if target is None:
            self.refusals.pop(alias, None)
            still = {p for p in current.values() if p}
            if still:
                versions = ", ".join(sorted(f"v{Path(p).name.removeprefix('v')}" for p in still))
                warnings[alias] = (
                    f"alias {alias!r} is not set: {stable!r} keeps serving {versions}; set the alias to pin "
                    "a version"
                )
                for p in still:
                    desired.setdefault(stable, p)
            return [], "no-target"
        version = target.version
        dest = self.version_dir(version)
        vname = version_name(self.model_name, version)
        todo = [i for i, path in current.items() if path != str(dest)]
        if not todo:
            self.refusals.pop(alias, None)
            desired[stable] = desired[vname] = str(dest)
            self._note_served(alias, version)
            return [], "unchanged"
        for path in {p for p in current.values() if p}:  # what serves now keeps serving on a refusal
            desired.setdefault(stable, path)
        permission = serve_permission(target.tags)
        if not permission.allowed:
            self._refuse(alias, version, "gate", permission.reason)
            return [], "refused"
        canary = canary_of(target.tags)
        failed = (version, canary.to_tag())
        if failed in self._canary_failed:
            self._refuse(alias, version, "canary", self._canary_failed[failed])
            return [], "refused"
        self._download(version, dest)
        done: list[str] = []
        for i in todo:
            replica = self.replicas[i]
            started = time.monotonic()
            problem = self._load_checked(replica, served[i], vname, dest, canary)
            if problem is not None:
                self._canary_failed[failed] = problem
                self._refuse(alias, version, "canary", problem)
                return done, "refused"
            replica.load_adapter(stable, str(dest))  # a warm version: the stable name shares its id
            after = replica.adapters().get(stable)
            if after != str(dest):
                raise RuntimeError(f"{replica.base_url} reports {after!r} for {stable} after loading {dest}")
            served[i][stable] = str(dest)
            self.metrics.swaps.labels(self.model_name, alias).inc()
            self.metrics.swap_seconds.labels(self.model_name).observe(time.monotonic() - started)
            done.append(f"{stable} -> v{version} on {replica.base_url}")
        self.refusals.pop(alias, None)
        desired[stable] = desired[vname] = str(dest)
        self._note_served(alias, version)
        self._keep_warm(version)
        return done, "loaded"

    def _download(self, version: str, dest: Path) -> None:
        if not _is_adapter(dest):
            self.registry.download_adapter(version, dest)
        if not _is_adapter(dest):
            raise ValueError(f"version {version} has no {ADAPTER_MARKER}: not a LoRA adapter")

    def _load_checked(
        self, replica: ServingBackend, names: dict[str, str], vname: str, dest: Path, canary: Canary
    ) -> str | None:
        """Serve ``dest`` as ``vname`` on ``replica`` (``names``: what it serves, updated) and check the
        canary unless it passed there since that load. None when it is ready, else the canary's problem."""
        key = (replica.base_url, str(dest), canary.to_tag())
        if names.get(vname) != str(dest):
            self._canary_passed = {k for k in self._canary_passed if k[:2] != key[:2]}
            replica.load_adapter(vname, str(dest))
            names[vname] = str(dest)
        if key in self._canary_passed:
            return None
        problem = canary.problem(replica.complete(vname, canary.request, canary.max_tokens))
        if problem is None:
            self._canary_passed.add(key)
        return problem

    # -- warm versions -----------------------------------------------------------------------------------

    def warm(self, version: str, trigger: str = "warm") -> SyncResult:
        """Load a version that may be served (gate passed, or a person's override) under its version name
        on every replica and check its canary now, so that moving an alias to it later only switches the
        stable name to an adapter already loaded. At most ``warm_versions`` versions that no alias points
        at stay warm, the least recently used leave first."""
        if self.warm_versions <= 0:
            return SyncResult("ignored", self._clock(), trigger, version, details=("warm_versions is 0",))
        with self._lock:
            try:
                info = self.registry.get_version(version)
                permission = serve_permission(info.tags)
                if not permission.allowed:
                    return SyncResult(
                        "ignored", self._clock(), trigger, version, details=(permission.reason,)
                    )
                canary = canary_of(info.tags)
                failed = (version, canary.to_tag())
                if failed in self._canary_failed:
                    return SyncResult(
                        "refused", self._clock(), trigger, version, details=(self._canary_failed[failed],)
                    )
                dest = self.version_dir(version)
                self._download(version, dest)
            except Exception as exc:  # not recorded as the serving state: nothing served changed
                return SyncResult("failed", self._clock(), trigger, version, error=_describe(exc))
            vname = version_name(self.model_name, version)
            errors: list[str] = []
            for replica in self.replicas:
                try:
                    problem = self._load_checked(replica, replica.adapters(), vname, dest, canary)
                except Exception as exc:
                    errors.append(f"{replica.base_url}: {_describe(exc)}")
                    continue
                if problem is not None:
                    self._canary_failed[failed] = problem
                    self._tag_refusal(version, f"{self._clock()}: not warmed (canary): {problem}")
                    return SyncResult(
                        "refused", self._clock(), trigger, version, str(dest), details=(problem,)
                    )
            if errors:
                return SyncResult("failed", self._clock(), trigger, version, str(dest), "; ".join(errors))
            self._keep_warm(version)
            with self._state_lock:
                self._trim_warm(self.desired)
            return SyncResult(
                "loaded", self._clock(), trigger, version, str(dest), details=(f"{vname} warm",)
            )

    def warm_names(self) -> list[str]:
        """The version names kept warm, most recently used last."""
        return [version_name(self.model_name, v) for v in self._warm]

    def _keep_warm(self, version: str) -> None:
        if self.warm_versions > 0:
            self._warm.pop(version, None)
            self._warm[version] = None

    def _trim_warm(self, desired: dict[str, str]) -> None:
        """Forget the least recently used warm versions past ``warm_versions`` among those no alias wants
        (their names then retire like any other version name)."""
        wanted = {_version_of(p) for p in desired.values()}
        idle = [v for v in self._warm if v not in wanted]
        for version in idle[: max(0, len(idle) - self.warm_versions)]:
            del self._warm[version]

    def _note_served(self, alias: str, version: str) -> None:
        """Append ``version`` to the alias history on the registered model (what ``loraops rollback``
        reads), once per change: every move is seen here, the MLflow UI's included."""
        if self._history_last.get(alias) == version:
            return
        try:
            self.registry.push_alias_history(alias, version)
            self._history_last[alias] = version
        except Exception as exc:  # retried at the next reconcile
            sys.stderr.write(f"{_utc_now()} recording the {alias} history failed: {_describe(exc)}\n")

    def _refuse(self, alias: str, version: str, kind: Literal["gate", "canary"], reason: str) -> None:
        refusal = Refusal(version, alias, kind, reason, self._clock())
        self.refusals[alias] = refusal
        key = (version, kind, reason)
        if key in self._refused_keys:
            return
        self._refused_keys.add(key)
        self.metrics.refusals.labels(self.model_name, alias, kind).inc()
        stable = self.stable_name(alias)
        self._tag_refusal(version, f"{refusal.at}: not served as {stable!r} ({kind}): {reason}")

    def _tag_refusal(self, version: str, text: str) -> None:
        try:
            self.registry.tag_version(version, {REFUSED_TAG: text[:5000]})
        except Exception as exc:  # the refusal stands; the tag is retried on the next new refusal
            sys.stderr.write(f"{_utc_now()} tagging the refusal on v{version} failed: {_describe(exc)}\n")

    def _retire_version_names(self, served: dict[int, dict[str, str]], desired: dict[str, str]) -> None:
        """Unload ``<model>-v<N>`` names that no alias has wanted for ``grace_s`` (apps pinned to a
        version keep it that long after the alias moved away)."""
        prefix = f"{self.model_name}-v"
        now = time.monotonic()
        unwanted: set[str] = set()
        warm = set(self.warm_names())
        for i, names in served.items():
            for name in list(names):
                if (
                    name in desired
                    or name in warm
                    or not (name.startswith(prefix) and name[len(prefix) :].isdigit())
                ):
                    continue
                unwanted.add(name)
                if now - self._unwanted_since.setdefault(name, now) >= self.grace_s:
                    self.replicas[i].unload_adapter(name)
                    del names[name]
        self._unwanted_since = {n: t for n, t in self._unwanted_since.items() if n in unwanted}

    def _prune(self, served: dict[int, dict[str, str]], desired: dict[str, str]) -> None:
        """Delete downloaded versions that no replica serves and no alias wants."""
        if not self.model_dir.is_dir() or len(served) != len(self.replicas):
            return  # an unreachable replica may still read its directories
        keep = {Path(p) for p in desired.values()}
        keep |= {Path(p) for names in served.values() for p in names.values()}
        for child in self.model_dir.iterdir():
            if child.is_dir() and child not in keep and re.fullmatch(r"\.?v\d+(\..*)?", child.name):
                shutil.rmtree(child, ignore_errors=True)

    # -- events and status ------------------------------------------------------------------------------

    def handle(self, event: AliasEvent) -> SyncResult:
        if event.name != self.model_name or event.alias not in self.aliases:
            return SyncResult("ignored", self._clock(), f"webhook {event.name}@{event.alias}", event.version)
        if event.action == "deleted":
            return self.reconcile(trigger=f"webhook: {event.alias} deleted")
        return self.reconcile(trigger=f"webhook: {event.alias} -> v{event.version}")

    def drifted(self) -> bool:
        """True when a replica serves something else than the last reconcile left (one cheap call each)."""
        with self._state_lock:
            desired = dict(self.desired)
        if not desired:
            return False
        for replica in self.replicas:
            try:
                names = replica.adapters()
            except Exception:
                return True
            if any(names.get(name) != path for name, path in desired.items()):
                return True
        return False

    def status(self) -> dict[str, Any]:
        """Desired vs actual per replica; actual is read from each vLLM now, not remembered."""
        with self._state_lock:
            desired = dict(self.desired)
            warnings = dict(self.warnings)
            refusals = {a: asdict(r) for a, r in self.refusals.items()}
            last = self.last.to_dict() if self.last else None
            last_failure = self.last_failure.to_dict() if self.last_failure else None
        replicas: list[dict[str, Any]] = []
        for replica in self.replicas:
            try:
                names = replica.adapters()
                actual = {n: p for n, p in names.items() if self.hosted.owns(n)}
                replicas.append(
                    {
                        "url": replica.base_url,
                        "reachable": True,
                        "serving": {n: _version_of(p) for n, p in sorted(actual.items())},
                        "in_sync": all(actual.get(n) == p for n, p in desired.items()),
                        "error": None,
                    }
                )
            except Exception as exc:
                replicas.append(
                    {
                        "url": replica.base_url,
                        "reachable": False,
                        "serving": {},
                        "in_sync": False,
                        "error": _describe(exc),
                    }
                )
        stable = self.stable_name(self.champion_alias)
        first = replicas[0]["serving"] if replicas else {}
        return {
            "model": self.model_name,
            "aliases": {
                alias: {
                    "stable_name": self.stable_name(alias),
                    "desired_version": _version_of(desired[self.stable_name(alias)])
                    if self.stable_name(alias) in desired
                    else None,
                    "refused": refusals.get(alias),
                    "warning": warnings.get(alias),
                }
                for alias in self.aliases
            },
            "desired": {n: _version_of(p) for n, p in sorted(desired.items())},
            "warm": self.warm_names(),
            "replicas": replicas,
            "in_sync": bool(replicas) and all(r["in_sync"] for r in replicas),
            "served_version": first.get(stable),
            "served_path": desired.get(stable) if first.get(stable) else None,
            "error": last["error"] if last else None,
            "last": last,
            "last_failure": last_failure,
        }

    def _record(self, result: SyncResult) -> SyncResult:
        with self._state_lock:
            self.last = result
            if not result.ok:
                self.last_failure = result
        return result


# -- many models on one server ----------------------------------------------------------------------------


class ModelCatalog(Protocol):
    """Where the hook learns which registered models are built on its base model (the registry)."""

    def hosted_models(self) -> list[HostedModel]: ...


class ServingHook:
    """Every registered model served on one base model, each kept in sync by its own ``ModelSync`` on
    the shared replicas: its stable names, version names and aliases are its own, so a promotion of one
    never touches another's names.

    The hook follows the ``explicit`` models, and the ones the ``catalog`` finds (tagged with the
    server's base model at registration), oldest first, up to ``max_models``: what vLLM was sized for
    (``--max-loras``, ``--max-cpu-loras``). A model past that, or one whose names would clash with a
    followed model's, is not served and ``/status`` says why.
    """

    def __init__(
        self,
        make_sync: Callable[[HostedModel], ModelSync],
        explicit: Sequence[HostedModel] = (),
        catalog: ModelCatalog | None = None,
        *,
        max_models: int = 1,
        reserved_names: Sequence[str] = (),
        metrics: SyncMetrics | None = None,
    ) -> None:
        self.make_sync = make_sync
        self.catalog = catalog
        self.max_models = max_models
        self.reserved_names = tuple(reserved_names)
        self.metrics = metrics or SyncMetrics()
        self.syncs: dict[str, ModelSync] = {}
        self.not_served: dict[str, str] = {}  # model -> why the hook does not serve it
        self.discovery_error: str | None = None
        self._lock = threading.Lock()  # one change of the followed set at a time
        for model in explicit:
            self._follow(model)

    @classmethod
    def single(cls, sync: ModelSync) -> ServingHook:
        """A hook around one ``ModelSync`` (what one workspace with its own server needs)."""
        return cls(lambda _: sync, [sync.hosted], metrics=sync.metrics)

    def _follow(self, model: HostedModel) -> ModelSync | None:
        with self._lock:
            if model.name in self.syncs:
                return self.syncs[model.name]
            why = self._why_not(model)
            if why is not None:
                if self.not_served.get(model.name) != why:
                    sys.stderr.write(f"{_utc_now()} {model.name} is not served: {why}\n")
                self.not_served[model.name] = why
                return None
            self.not_served.pop(model.name, None)
            sync = self.make_sync(model)
            self.syncs[model.name] = sync
            sys.stderr.write(f"{_utc_now()} following {model.name} (aliases {', '.join(model.aliases)})\n")
            return sync

    def _why_not(self, model: HostedModel) -> str | None:
        from loraops.errors import ConfigError

        try:
            model.stable_names()
        except ConfigError as exc:
            return exc.message
        for name in self.reserved_names:
            if model.owns(name):
                return f"its served name {name!r} is the base model's name on this server; rename the model"
        for sync in self.syncs.values():
            clash = model.clashes_with(sync.hosted)
            if clash is not None:
                return f"its served names clash: {clash}; rename one of the registered models"
        if len(self.syncs) >= self.max_models:
            followed = ", ".join(sorted(self.syncs))
            return (
                f"the server hosts at most {self.max_models} registered model(s) ({followed}): raise "
                "serving.max_models in the params.yaml of the workspace that runs the stack and run "
                "`loraops up` there (vLLM restarts once with room for more adapters)"
            )
        return None

    def discover(self) -> None:
        """Follow the catalog's models that are not followed yet (kept as they are when it fails)."""
        if self.catalog is None:
            return
        try:
            models = self.catalog.hosted_models()
        except Exception as exc:  # the registry may be down: keep what is followed, retry next round
            self.discovery_error = _describe(exc)
            return
        self.discovery_error = None
        for model in models:
            if model.name not in self.syncs:
                self._follow(model)

    def sync_for(self, model_name: str) -> ModelSync | None:
        return self.syncs.get(model_name)

    def _sync_of(self, model_name: str) -> ModelSync | None:
        """The model's sync, looking the registry up once for a model not followed yet."""
        if model_name not in self.syncs:
            self.discover()
        return self.syncs.get(model_name)

    def reconcile(self, trigger: str = "reconcile") -> dict[str, SyncResult]:
        """Discover, then reconcile every followed model; one model's failure does not stop the others."""
        self.discover()
        return {name: sync.reconcile(trigger=trigger) for name, sync in list(self.syncs.items())}

    def handle(self, event: AliasEvent) -> SyncResult:
        """Route an alias event to its model's sync (a model the hook has not seen yet is looked up)."""
        sync = self._sync_of(event.name)
        if sync is None:
            why = self.not_served.get(event.name, "not a model on this server's base model")
            return SyncResult(
                "ignored",
                _utc_now(),
                f"webhook {event.name}@{event.alias}",
                event.version,
                error=None,
                details=(why,),
            )
        return sync.handle(event)

    def warm(self, event: TagEvent) -> SyncResult:
        """Warm the version whose serving decision (gate or override tag) or canary was just recorded."""
        trigger = f"webhook {event.name} v{event.version} {event.key}={event.value[:40]}"
        sync = self._sync_of(event.name)
        if sync is None or event.key not in (GATE_TAG, OVERRIDE_TAG, CANARY_TAG):
            return SyncResult("ignored", _utc_now(), trigger, event.version)
        return sync.warm(event.version, trigger=trigger)

    def drifted(self) -> list[ModelSync]:
        """The followed models whose replicas drifted from their last reconcile."""
        return [sync for sync in list(self.syncs.values()) if sync.drifted()]

    def status(self) -> dict[str, Any]:
        """Every followed model's status, and the models the hook does not serve with the reason."""
        return {
            "models": {name: sync.status() for name, sync in sorted(self.syncs.items())},
            "not_served": dict(self.not_served),
            "capacity": {"max_models": self.max_models, "followed": len(self.syncs)},
            "discovery_error": self.discovery_error,
        }


def _version_of(path: str) -> str:
    name = Path(path).name
    return name[1:] if name.startswith("v") and name[1:].isdigit() else path


# -- HTTP service (Starlette on uvicorn) ------------------------------------------------------------------


@dataclass
class HookState:
    """What the HTTP handlers share: the hook, the secrets, and the counts they report."""

    hook: ServingHook
    secret: str
    token: str  # bearer token of /status and /reconcile
    deliveries: DeliveryLog = field(default_factory=DeliveryLog)
    counts: dict[str, int] = field(default_factory=lambda: {"accepted": 0, "rejected": 0, "repeated": 0})
    webhook: dict[str, Any] = field(default_factory=lambda: {"registered": None, "error": None})
    wake: threading.Event = field(default_factory=threading.Event)

    def count(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        self.hook.metrics.deliveries.labels(outcome).inc()

    def status(self, model: str | None = None) -> dict[str, Any] | None:
        """One model's status (None when the hook does not follow it), or every model's without ``model``."""
        extra = {"deliveries": dict(self.counts), "webhook": dict(self.webhook)}
        if model is None:
            return {**self.hook.status(), **extra}
        sync = self.hook.sync_for(model)
        if sync is None:
            return None
        return {**sync.status(), **extra}


def _warm_logged(hook: ServingHook, event: TagEvent) -> None:
    result = hook.warm(event)
    if result.action != "ignored":
        sys.stderr.write(f"{result.at} warm {event.name} v{event.version}: {json.dumps(result.to_dict())}\n")


def _authorized(headers: Any, token: str) -> bool:
    scheme, _, given = str(headers.get("authorization", "")).partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


def build_app(state: HookState) -> Any:
    """The hook's ASGI app: /health, /metrics (open); /status, /reconcile (bearer token); the webhook."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def denied() -> JSONResponse:
        return JSONResponse(
            {"error": "this endpoint needs Authorization: Bearer <token> (.loraops/vllm-admin.token)"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def body_of(request: Request) -> bytes | JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            code = 413 if declared.isdigit() else 400
            return JSONResponse({"error": f"bad Content-Length {declared[:40]!r}"}, status_code=code)
        try:
            body = await asyncio.wait_for(request.body(), timeout=BODY_TIMEOUT_S)
        except TimeoutError:
            return JSONResponse(
                {"error": f"body not received within {BODY_TIMEOUT_S:.0f} s"}, status_code=408
            )
        if len(body) > MAX_BODY_BYTES:
            return JSONResponse({"error": "body too large"}, status_code=413)
        return body

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    def unknown(model: str) -> JSONResponse:
        followed = ", ".join(sorted(state.hook.syncs)) or "none"
        why = state.hook.not_served.get(model, "no registered model of that name on this server's base model")
        return JSONResponse(
            {"error": f"{model!r} is not served here: {why} (followed: {followed})"}, status_code=404
        )

    async def status(request: Request) -> JSONResponse:
        if not _authorized(request.headers, state.token):
            return denied()
        model = request.query_params.get("model")
        doc = await run_in_threadpool(state.status, model)
        return unknown(str(model)) if doc is None else JSONResponse(doc)

    async def reconcile(request: Request) -> JSONResponse:
        if not _authorized(request.headers, state.token):
            return denied()
        body = await body_of(request)
        if isinstance(body, JSONResponse):
            return body
        model = request.query_params.get("model")
        results = await run_in_threadpool(state.hook.reconcile, "manual")
        if model is not None:
            if model not in results:
                return unknown(model)
            one = results[model]
            return JSONResponse(one.to_dict(), status_code=200 if one.ok else 500)
        ok = all(r.ok for r in results.values())
        doc = {"ok": ok, "models": {name: r.to_dict() for name, r in results.items()}}
        return JSONResponse(doc, status_code=200 if ok else 500)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(state.hook.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def hook(request: Request) -> JSONResponse:
        body = await body_of(request)
        if isinstance(body, JSONResponse):
            return body
        delivery = request.headers.get("x-mlflow-delivery-id", "")
        ok = verify_signature(
            state.secret,
            delivery,
            request.headers.get("x-mlflow-timestamp", ""),
            body,
            request.headers.get("x-mlflow-signature", ""),
            now=time.time(),
        )
        if not ok:
            state.count("rejected")
            return JSONResponse({"error": "missing or invalid X-MLflow-Signature"}, status_code=401)
        if state.deliveries.seen(delivery, time.time()):
            state.count("repeated")
            return JSONResponse({"error": f"delivery {delivery} was already accepted"}, status_code=409)
        state.count("accepted")
        event = parse_alias_event(body)
        if event is None:
            tag = parse_tag_event(body)
            state.deliveries.remember(delivery, time.time())
            if tag is None:
                return JSONResponse({"action": "ignored", "reason": "not an alias or version tag event"})
            # answered at once: warming takes a canary's time, and MLflow needs no result of it
            threading.Thread(target=_warm_logged, args=(state.hook, tag), daemon=True).start()
            return JSONResponse({"action": "accepted", "reason": f"warming v{tag.version} if it may serve"})
        # 500 on failure: MLflow retries (same delivery id), and the delivery shows as failed in its log.
        result = await run_in_threadpool(state.hook.handle, event)
        if result.ok:
            state.deliveries.remember(delivery, time.time())
        sys.stderr.write(f"{result.at} webhook {event}: {json.dumps(result.to_dict())}\n")
        return JSONResponse(result.to_dict(), status_code=200 if result.ok else 500)

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/status", status),
            Route("/metrics", metrics),
            Route("/reconcile", reconcile, methods=["POST"]),
            Route(HOOK_PATH, hook, methods=["POST"]),
        ]
    )


def uvicorn_config(app: Any, host: str, port: int) -> Any:
    """uvicorn with what a small public-facing service needs: a real backlog, short keep-alive, a cap on
    concurrent connections, small header limit (slow or malformed clients get 4xx, not threads)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        backlog=2048,
        timeout_keep_alive=5,
        limit_concurrency=1000,
        h11_max_incomplete_event_size=64 * 1024,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


def webhook_secret(path: Path) -> str:
    """The shared secret of MLflow's webhook and the hook, made on first use (mode 600)."""
    return read_or_create_secret(path)


def hook_url(host: str, port: int) -> str:
    return http_url(host, port, HOOK_PATH)


def sync_service_spec(
    state_dir: Path,
    port: int,
    tracking_uri: str,
    vllm_urls: Sequence[str],
    model_name: str | None,
    secret_file: Path,
    token_file: Path,
    adapters_dir: Path,
    *,
    base_model: str | None = None,
    max_models: int = 1,
    api_key_file: Path | None = None,
    champion_alias: str = "champion",
    challenger_alias: str = "challenger",
    host: str = "127.0.0.1",
    reconcile_interval_s: float = 30.0,
    watch_interval_s: float = 2.0,
    grace_s: float = 300.0,
    warm_versions: int = 0,
    max_lora_rank: int | None = None,
    swap: Literal["inplace", "reload"] = "inplace",
    webhook_url: str | None = None,
) -> ServiceSpec:
    """The hook as a managed service. At start it registers its own MLflow webhook (``webhook_url``,
    default ``http://<host>:<port>/hooks/mlflow``), then reconciles. It serves ``model_name`` and, with
    ``base_model`` (the base model's served name), every registered model tagged with it, up to
    ``max_models``. ``token_file`` holds the token of /status, /reconcile and of vLLM's load/unload
    endpoints; ``api_key_file`` vLLM's API key."""
    command = [
        sys.executable, "-m", "loraops.serving.sync",
        "--host", host,
        "--port", str(port),
        "--tracking-uri", tracking_uri,
        "--max-models", str(max_models),
        "--alias", champion_alias,
        "--challenger-alias", challenger_alias,
        "--secret-file", str(secret_file),
        "--token-file", str(token_file),
        "--adapters-dir", str(adapters_dir),
        "--reconcile-interval", str(reconcile_interval_s),
        "--watch-interval", str(watch_interval_s),
        "--grace", str(grace_s),
        "--warm-versions", str(warm_versions),
        "--swap", swap,
        "--webhook-url", webhook_url or hook_url(host, port),
    ]  # fmt: skip
    for url in vllm_urls:
        command += ["--vllm-url", url]
    if model_name is not None:
        command += ["--model-name", model_name]
    if base_model is not None:
        command += ["--base-model", base_model]
    if api_key_file is not None:
        command += ["--api-key-file", str(api_key_file)]
    if max_lora_rank is not None:
        command += ["--max-lora-rank", str(max_lora_rank)]
    return ServiceSpec(
        name="sync",
        command=command,
        port=port,
        health_url=http_url(host, port, "/health"),
        env={"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "PYTHONUNBUFFERED": "1"},
        cwd=state_dir,
        start_timeout_s=60.0,
        config_key="stack.sync_port",
    )


def run_loop(
    state: HookState,
    stop: threading.Event,
    reconcile_interval_s: float,
    watch_interval_s: float,
    register_webhook: Callable[[], None] | None = None,
) -> None:
    """Register the webhook (retried until it works: MLflow may start later), reconcile at start, then
    every ``reconcile_interval_s``, and at once when a replica drifts (checked every ``watch_interval_s``)."""
    hook = state.hook
    last: dict[str, str] = {}  # model -> its last reconcile action (a standing "no-target" is logged once)
    pending = register_webhook
    trigger = "startup"
    next_full = 0.0
    while not stop.is_set():
        if pending is not None:
            try:
                pending()
                state.webhook = {"registered": True, "error": None}
                pending = None
            except Exception as exc:  # retried on the next round
                state.webhook = {"registered": False, "error": _describe(exc)}
                sys.stderr.write(f"{_utc_now()} registering the webhook failed: {_describe(exc)}\n")
        now = time.monotonic()
        if trigger != "periodic" or now >= next_full:
            results = hook.reconcile(trigger=trigger)
            next_full = time.monotonic() + reconcile_interval_s if reconcile_interval_s > 0 else float("inf")
        else:
            results = {sync.model_name: sync.reconcile(trigger="drift") for sync in hook.drifted()}
        for name, result in results.items():
            quiet = result.action == "unchanged" or (
                result.action == "no-target" and last.get(name) == "no-target"
            )
            last[name] = result.action
            if not quiet or not result.ok:
                sys.stderr.write(
                    f"{result.at} {name} reconcile ({result.trigger}): {json.dumps(result.to_dict())}\n"
                )
        trigger = "periodic"
        wait = watch_interval_s if watch_interval_s > 0 else reconcile_interval_s
        if pending is not None:
            wait = min(wait or 5.0, 5.0)
        if wait <= 0 or stop.wait(wait):
            return


def serve(
    state: HookState,
    host: str,
    port: int,
    reconcile_interval_s: float,
    watch_interval_s: float = 2.0,
    register_webhook: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, with the reconcile loop in a thread."""
    import uvicorn

    stop = threading.Event()
    server = uvicorn.Server(uvicorn_config(build_app(state), host, port))
    loop = threading.Thread(
        target=run_loop,
        args=(state, stop, reconcile_interval_s, watch_interval_s, register_webhook),
        name="reconcile",
        daemon=True,
    )
    loop.start()
    followed = ", ".join(sorted(state.hook.syncs)) or "(models found in the registry)"
    sys.stderr.write(f"{_utc_now()} alias sync for {followed} on http://{host}:{port}\n")
    try:
        server.run()  # uvicorn handles SIGTERM/SIGINT: it stops accepting, finishes, returns
    finally:
        stop.set()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loraops.serving.sync", description="The loraops alias sync hook."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--vllm-url", action="append", required=True, help="a vLLM replica (repeatable)")
    parser.add_argument(
        "--model-name", action="append", default=[], help="a registered model to serve (repeatable)"
    )
    parser.add_argument(
        "--base-model",
        default=None,
        help="the base model's served name: also serve every registered model tagged with it",
    )
    parser.add_argument("--max-models", type=int, default=1, help="registered models vLLM was sized for")
    parser.add_argument("--alias", default="champion", help="the alias the stable name follows")
    parser.add_argument("--challenger-alias", default="challenger", help="served as <model>-<alias>")
    parser.add_argument("--secret-file", type=Path, required=True, help="HMAC secret of MLflow's webhook")
    parser.add_argument(
        "--token-file", type=Path, required=True, help="token of /status, /reconcile, vLLM admin"
    )
    parser.add_argument("--api-key-file", type=Path, default=None, help="the vLLM servers' API key")
    parser.add_argument("--adapters-dir", type=Path, required=True)
    parser.add_argument("--reconcile-interval", type=float, default=30.0, help="seconds; 0 turns it off")
    parser.add_argument("--watch-interval", type=float, default=2.0, help="seconds between drift checks")
    parser.add_argument("--grace", type=float, default=300.0, help="seconds a retired version name stays")
    parser.add_argument(
        "--warm-versions", type=int, default=0, help="servable versions kept loaded and checked per model"
    )
    parser.add_argument("--max-lora-rank", type=int, default=None, help="the vLLM server's --max-lora-rank")
    parser.add_argument("--swap", choices=["inplace", "reload"], default="inplace")
    parser.add_argument(
        "--webhook-url",
        default=None,
        help="register this URL as MLflow webhook at start (how MLflow reaches us)",
    )
    parser.add_argument("--no-webhook", action="store_true", help="do not register a webhook at start")
    args = parser.parse_args(argv)

    from loraops.registry.params import RegistryParams
    from loraops.registry.tracking import HostedModelCatalog, Registry
    from loraops.serving.vllm import VllmClient

    token = read_or_create_secret(args.token_file)
    api_key = read_or_create_secret(args.api_key_file) if args.api_key_file else None
    replicas = [
        VllmClient(url, max_lora_rank=args.max_lora_rank, swap=args.swap, api_key=api_key, admin_token=token)
        for url in args.vllm_url
    ]
    metrics = SyncMetrics()

    def registry_of(model: HostedModel) -> Registry:
        aliases = [*model.aliases, "challenger"]
        return Registry(
            args.tracking_uri,
            RegistryParams(
                model_name=model.name,
                champion_alias=model.champion_alias,
                challenger_alias=next(a for a in aliases if a != model.champion_alias),
            ),
        )

    def make_sync(model: HostedModel) -> ModelSync:
        return ModelSync(
            registry_of(model),
            replicas,
            args.adapters_dir,
            model.name,
            champion_alias=model.champion_alias,
            aliases=model.aliases,
            grace_s=args.grace,
            warm_versions=args.warm_versions,
            metrics=metrics,
        )

    explicit = [
        HostedModel(name, args.alias, (args.alias, args.challenger_alias)) for name in args.model_name
    ]
    catalog = HostedModelCatalog(args.tracking_uri, args.base_model) if args.base_model else None
    if not explicit and catalog is None:
        parser.error("give --model-name, --base-model or both")
    hook = ServingHook(
        make_sync,
        explicit,
        catalog,
        max_models=max(args.max_models, len(explicit)),
        reserved_names=[args.base_model] if args.base_model else [],
        metrics=metrics,
    )
    state = HookState(hook, webhook_secret(args.secret_file), token)
    url = args.webhook_url or hook_url(args.host, args.port)
    webhooks = Registry(args.tracking_uri, RegistryParams())
    register = None if args.no_webhook else (lambda: webhooks.ensure_webhook(url, state.secret))
    serve(state, args.host, args.port, args.reconcile_interval, args.watch_interval, register)
    return 0


if __name__ == "__main__":
    sys.exit(main())
