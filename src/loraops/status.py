"""`loraops status`: one registered model at a glance, from where each fact lives.

Versions, scores, gate decisions and aliases come from the MLflow registry; what each vLLM replica serves
comes from the sync hook (which reads it from vLLM); the data versions from the champion's lineage tag
and the workspace's dvc.lock; the last retrain and the next scheduled one from the Prefect API. A source
that does not answer is shown as such: status never fails because one service is down.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from loraops.loop.rules import trained_on

T = TypeVar("T")


@dataclass(frozen=True)
class VersionRow:
    """One registered version: its gate decision, its task score and the aliases on it."""

    version: str
    gate: str
    score: float | None
    aliases: tuple[str, ...]
    data_hash: str | None


@dataclass(frozen=True)
class ReplicaRow:
    url: str
    serving: Mapping[str, str]  # served name -> version
    in_sync: bool
    error: str | None = None


@dataclass(frozen=True)
class RunRow:
    name: str
    state: str
    url: str
    when: str


@dataclass(frozen=True)
class DeploymentRow:
    """One retrain deployment of the stack: one registered model's schedule."""

    name: str  # retrain/<deployment>
    model: str
    workspace: str
    schedule: str  # "cron '0 3 * * *' (UTC)" or "when triggered"
    next_run: str | None
    crons: tuple[str, ...] = ()  # the active cron expressions

    def line(self) -> str:
        due = self.next_run or "none scheduled"
        return f"   {self.name:<28s} {self.model:<20s} {self.schedule:<28s} next {due}  ({self.workspace})"


@dataclass(frozen=True)
class Sourced:
    """A fact, or why it is unknown."""

    value: Any = None
    error: str | None = None


@dataclass(frozen=True)
class ModelStatus:
    model: str
    champion_alias: str
    versions: Sourced  # list[VersionRow], newest first
    replicas: Sourced  # list[ReplicaRow]
    prepared_data: str | None  # DVC hash of data/prepared in dvc.lock
    last_run: Sourced  # RunRow | None
    next_run: Sourced  # str | None
    urls: Mapping[str, str] = field(default_factory=dict)

    def champion(self) -> VersionRow | None:
        rows: list[VersionRow] = self.versions.value or []
        return next((r for r in rows if self.champion_alias in r.aliases), None)

    def lines(self, max_versions: int = 10) -> list[str]:
        """The report `loraops status` prints."""
        out = [f"== {self.model}"]
        if self.versions.error:
            out.append(f"   versions: unknown ({self.versions.error})")
        elif not self.versions.value:
            out.append("   versions: none registered yet (`loraops retrain` makes the first)")
        else:
            out.append("   version  gate             score  aliases")
            for row in self.versions.value[:max_versions]:
                score = f"{row.score:.3f}" if row.score is not None else "   - "
                aliases = ", ".join(row.aliases) or "-"
                out.append(f"   v{row.version:<7s} {row.gate:<16s} {score:>5s}  {aliases}")
        champion = self.champion()
        trained = champion.data_hash if champion else None
        if champion is None:
            data = "no champion"
        elif trained and trained == self.prepared_data:
            data = f"the champion (v{champion.version}) was trained on the prepared data ({trained[:12]})"
        else:
            prepared = self.prepared_data[:12] if self.prepared_data else "not versioned"
            was = trained[:12] if trained else "unknown"
            data = (
                f"the champion (v{champion.version}) was trained on {was}, "
                f"the prepared data is {prepared}: a retrain would train"
            )
        out.append(f"== data: {data}")
        out.append("== serving (read from vLLM by the sync hook)")
        if self.replicas.error:
            out.append(f"   unknown ({self.replicas.error})")
        for replica in self.replicas.value or []:
            served = ", ".join(f"{n} -> v{v}" for n, v in sorted(replica.serving.items())) or "nothing"
            state = (
                "in sync"
                if replica.in_sync
                else f"NOT in sync{f' ({replica.error})' if replica.error else ''}"
            )
            out.append(f"   {replica.url}: {served} [{state}]")
        last = self.last_run
        if last.error:
            out.append(f"== last retrain: unknown ({last.error})")
        elif last.value is None:
            out.append("== last retrain: none yet")
        else:
            run: RunRow = last.value
            out.append(f"== last retrain: {run.name} {run.state} ({run.when}) {run.url}")
        nxt = self.next_run
        if nxt.error:
            out.append(f"== next scheduled run: unknown ({nxt.error})")
        else:
            out.append(f"== next scheduled run: {nxt.value or 'none scheduled (`loraops schedule`)'}")
        for name, url in self.urls.items():
            out.append(f"   {name:<10s}: {url}")
        return out


def sourced(read: Callable[[], T]) -> Sourced:
    """``read()``, or the one-line reason it failed."""
    try:
        return Sourced(read())
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Sourced(error=text[:200])


def version_rows(versions: Sequence[Any], score_of: Callable[[Any], float | None]) -> list[VersionRow]:
    """Rows of registry versions (``ModelVersionInfo``), newest first; ``score_of`` reads a score."""
    return [
        VersionRow(
            version=v.version,
            gate=v.tags.get("gate", "not judged"),
            score=score_of(v),
            aliases=tuple(v.aliases),
            data_hash=trained_on(v.tags),
        )
        for v in versions
    ]


def replica_rows(hook_status: Mapping[str, Any]) -> list[ReplicaRow]:
    """The replicas of the hook's ``/status?model=`` answer."""
    return [
        ReplicaRow(
            url=str(r.get("url")),
            serving={str(k): str(v) for k, v in (r.get("serving") or {}).items()},
            in_sync=bool(r.get("in_sync")),
            error=r.get("error"),
        )
        for r in hook_status.get("replicas", [])
    ]
