"""The retrain loop's decisions, as pure functions: what a run is trained on, whether it needs to run,
and what it records. The flow (flows/retrain.py) only wires them to Prefect tasks."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from loraops.data.versioning import DataVersion
from loraops.train.run import replay_sample

# Version tags that say which data a version was trained on (registry lineage).
DATA_HASH_TAG = "data.dvc_hash"
DATA_VERSION_TAG = "data_version"


def lineage_tags(
    data_version: DataVersion,
    *,
    workspace_commit: str | None,
    code_commit: str | None,
    base_model_source: str,
    base_model_path: str,
    base_model_name: str,
) -> dict[str, str]:
    """The tags that tie a run and its registered version to the exact data, code and base model."""
    return {
        DATA_VERSION_TAG: data_version.tag(),
        **data_version.as_tags(),
        "git_commit": workspace_commit or "unknown",
        "code_commit": code_commit or "unknown",
        "base_model": base_model_source if base_model_source != "build" else base_model_path,
        "base_model_name": base_model_name,
    }


def trained_on(tags: Mapping[str, str]) -> str | None:
    """The DVC hash of the prepared data a version was trained on (from its lineage tags)."""
    digest = tags.get(DATA_HASH_TAG)
    if digest:
        return digest
    version = tags.get(DATA_VERSION_TAG, "")
    return version.partition("@")[0] or None


def skip_reason(champion: tuple[str, Mapping[str, str]] | None, data: DataVersion, force: bool) -> str | None:
    """Why this run need not train, or None when it must: it trains when forced, when nothing is
    champion yet, or when the prepared data differs from what the champion was trained on."""
    if force or champion is None:
        return None
    version, tags = champion
    if trained_on(tags) != data.dvc_hash:
        return None
    return f"data {data.dvc_hash[:12]} unchanged: the champion (version {version}) was trained on it"


def replay_records(
    fraction: float,
    train_count: int,
    seed: int,
    pool: Callable[[], Sequence[dict[str, Any]]],
) -> list[dict[str, Any]]:
    """The general examples mixed into training against forgetting: ``fraction`` of the training split,
    a seeded sample of ``pool()`` (read only when needed)."""
    if fraction <= 0:
        return []
    return replay_sample(pool(), fraction, train_count, seed)
