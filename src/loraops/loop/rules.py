"""The retrain loop's decisions, as pure functions: what a run is trained on, whether it needs to run,
and what it records. The flow (flows/retrain.py) only wires them to Prefect tasks."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from loraops.basemodel.gguf import is_gguf_source
from loraops.data.versioning import DataVersion
from loraops.errors import ConfigError, DataError, StackError
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
        # the built or converted model's directory is named by its content hash; a hub id or path as given
        "base_model": base_model_path if local_model(base_model_source) else base_model_source,
        "base_model_name": base_model_name,
    }


def local_model(source: str) -> bool:
    """Whether loraops makes the base model itself (built, or converted from GGUF) into its cache."""
    return source == "build" or is_gguf_source(source)


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


_TRANSIENT_NAMES = frozenset(
    {
        "EndpointConnectionError",  # botocore: S3 / SageMaker endpoint unreachable
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "ConnectError",  # httpx (Prefect, openai)
        "ReadTimeout",
        "ConnectTimeout",
        "RemoteProtocolError",
        "APIConnectionError",  # openai client
        "APITimeoutError",
    }
)
_TRANSIENT_AWS_CODES = frozenset(
    {"Throttling", "ThrottlingException", "RequestTimeout", "SlowDown", "ServiceUnavailable", "InternalError"}
)


def _transient_one(exc: BaseException) -> bool | None:
    """True/False when ``exc`` alone decides, None when its cause should."""
    if isinstance(exc, DataError | ConfigError):
        return False  # bad data or settings: the same input fails the same way
    if isinstance(exc, StackError):
        return True  # a service did not answer
    status = getattr(exc, "code", None) or getattr(getattr(exc, "response", None), "status_code", None)
    if type(exc).__name__ == "HTTPError" and isinstance(status, int):
        return status >= 500 or status in (408, 429)
    if callable(getattr(exc, "get_http_status_code", None)):  # MlflowException, RestException
        http = int(exc.get_http_status_code())  # type: ignore[attr-defined]
        return http >= 500 or http == 429
    if type(exc).__name__ == "ClientError":  # botocore
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        return code in _TRANSIENT_AWS_CODES
    if type(exc).__name__ in _TRANSIENT_NAMES or isinstance(exc, ConnectionError | TimeoutError):
        return True
    if type(exc).__name__ == "URLError":
        return True
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether running the step again can help: a service that did not answer (MLflow, S3, the vLLM
    server, the sync hook), never bad data, bad settings, a gate refusal or a failed training."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        verdict = _transient_one(current)
        if verdict is not None:
            return verdict
        current = current.__cause__ or current.__context__
    return False


def services_needed(mlflow: str, server: str, sync: str, *, evaluate: bool, promotes: bool) -> dict[str, str]:
    """Health URL of every service a run uses, by name: MLflow always; the vLLM server to evaluate; the
    alias sync hook when a pass moves the champion (the run waits until it serves the new version)."""
    needed = {}
    if mlflow.startswith(("http://", "https://")):
        needed["MLflow"] = f"{mlflow.rstrip('/')}/health"
    if evaluate:
        needed["vLLM server"] = f"{server.rstrip('/')}/health"
        if promotes:
            needed["alias sync hook"] = f"{sync.rstrip('/')}/health"
    return needed


def unreachable(needed: Mapping[str, str], probe: Callable[[str], bool]) -> list[str]:
    """``name (url)`` of each needed service whose health URL does not answer."""
    return [f"{name} ({url.removesuffix('/health')})" for name, url in needed.items() if not probe(url)]
