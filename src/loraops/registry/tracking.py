"""A thin adapter over MlflowClient: runs, adapter versions with lineage tags, the champion alias, webhooks.

Every MLflow call goes through this module, so the rest of loraops sees ``ModelVersionInfo`` and
``LoraopsError`` instead of MLflow entities and ``MlflowException``.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from loraops.errors import StackError, StageError
from loraops.files import publish_dir
from loraops.registry.params import RegistryParams
from loraops.services import http_ok
from loraops.serving.names import HostedModel

WEBHOOK_NAME = "loraops-alias-sync"
HISTORY_TAG = "loraops.history."  # + alias: JSON list of the versions it served, oldest first
SERVED_ON_TAG = "loraops.serving.base"  # the base model's served name: the stacks that serve this model
SERVED_ALIASES_TAG = "loraops.serving.aliases"  # JSON list, champion first: the names the stack serves
# alias moves are served; a gate or override tag warms the version before any alias points at it
WEBHOOK_EVENTS = ["model_version_alias.created", "model_version_alias.deleted", "model_version_tag.set"]
# MLflow's log_batch limits per request.
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000


@dataclass(frozen=True)
class ModelVersionInfo:
    name: str
    version: str
    run_id: str | None
    source: str
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


def _info(mv: ModelVersion) -> ModelVersionInfo:
    return ModelVersionInfo(
        name=mv.name,
        version=str(mv.version),
        run_id=mv.run_id or None,
        source=mv.source or "",
        tags={str(k): str(v) for k, v in (mv.tags or {}).items()},
        aliases=tuple(mv.aliases or ()),
    )


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST"


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings to dotted keys with string values (MLflow params are flat strings)."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = "" if value is None else str(value)
    return flat


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


_METRIC_KEY_INVALID = re.compile(r"[^\w\-. :/]")


def metric_key(name: str) -> str:
    """MLflow accepts alphanumerics, _ - . space : / in metric names; Axolotl emits e.g. 'memory/x (GiB)'."""
    return _METRIC_KEY_INVALID.sub("_", name).strip()


class RunHandle:
    """Logging onto one MLflow run. Obtained from ``Registry.run`` (new run) or ``Registry.attach``."""

    def __init__(self, registry: Registry, run_id: str, experiment_id: str) -> None:
        self._registry = registry
        self._client = registry.client
        self.run_id = run_id
        self.experiment_id = experiment_id

    @property
    def url(self) -> str:
        return self._registry.run_url(self.run_id, self.experiment_id)

    def artifact_uri(self, path: str = "") -> str:
        """Where an artifact of this run lives (mlflow-artifacts:/... or s3://...)."""
        with self._registry.errors(f"looking up run {self.run_id}"):
            root = self._client.get_run(self.run_id).info.artifact_uri.rstrip("/")
        return f"{root}/{path}" if path else root

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params; nested mappings become dotted keys. MLflow refuses changing a logged param."""
        items = [Param(k, v) for k, v in flatten(params).items()]
        with self._registry.errors(f"logging params to run {self.run_id}"):
            for chunk in _chunks(items, _MAX_PARAMS_PER_BATCH):
                self._client.log_batch(self.run_id, params=chunk)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        items = [Metric(metric_key(k), float(v), now, step or 0) for k, v in metrics.items()]
        with self._registry.errors(f"logging metrics to run {self.run_id}"):
            for chunk in _chunks(items, _MAX_METRICS_PER_BATCH):
                self._client.log_batch(self.run_id, metrics=chunk)

    def log_steps(self, rows: list[tuple[dict[str, float], int]]) -> None:
        """Metrics of several steps in as few requests as MLflow allows."""
        now = int(time.time() * 1000)
        items = [
            Metric(metric_key(k), float(v), now, step) for values, step in rows for k, v in values.items()
        ]
        with self._registry.errors(f"logging metrics to run {self.run_id}"):
            for chunk in _chunks(items, _MAX_METRICS_PER_BATCH):
                self._client.log_batch(self.run_id, metrics=chunk)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [RunTag(k, v) for k, v in flatten(tags).items()]
        with self._registry.errors(f"tagging run {self.run_id}"):
            for chunk in _chunks(items, _MAX_PARAMS_PER_BATCH):
                self._client.log_batch(self.run_id, tags=chunk)

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        """Upload the contents of ``local_dir`` under ``artifact_path`` of the run."""
        if not local_dir.is_dir():
            raise StageError(f"cannot log artifacts: {local_dir} is not a directory")
        with self._registry.errors(f"uploading {local_dir} to run {self.run_id}"):
            self._client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_artifact(self, local_file: Path, artifact_path: str | None = None) -> None:
        if not local_file.is_file():
            raise StageError(f"cannot log artifact: {local_file} is not a file")
        with self._registry.errors(f"uploading {local_file} to run {self.run_id}"):
            self._client.log_artifact(self.run_id, str(local_file), artifact_path)


class MetricStream:
    """Per-step training metrics sent to a run while training runs, batched every ``every_s`` seconds
    (one request per Axolotl log line would slow a fast run down)."""

    def __init__(self, run: RunHandle, *, prefix: str = "train.", every_s: float = 2.0) -> None:
        self._run = run
        self._prefix = prefix
        self._every_s = every_s
        self._pending: list[tuple[dict[str, float], int]] = []
        self._last_flush = time.monotonic()
        self.step = 0

    def add(self, metrics: Mapping[str, float]) -> None:
        """One logged line of the trainer; a line with ``loss`` advances the step."""
        if "loss" in metrics:
            self.step += 1
        values = {f"{self._prefix}{k}": v for k, v in metrics.items() if k != "epoch"}
        if "epoch" in metrics:
            values[f"{self._prefix}epoch"] = metrics["epoch"]
        self._pending.append((values, self.step))
        if time.monotonic() - self._last_flush >= self._every_s:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        if pending:
            self._run.log_steps(pending)


class Registry:
    """One registered model (``params.model_name``) and its experiment on one MLflow server."""

    def __init__(self, tracking_uri: str, params: RegistryParams) -> None:
        self.tracking_uri = tracking_uri.rstrip("/")
        self.params = params
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        self._experiment_id: str | None = None

    # -- plumbing -------------------------------------------------------------------------------------

    def _is_http(self) -> bool:
        return self.tracking_uri.startswith(("http://", "https://"))

    @contextlib.contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """Turn MlflowException into StageError; an unreachable server into StackError.

        The reachability check comes first because the MLflow client retries a refused connection
        for minutes before it gives up.
        """
        if self._is_http() and not http_ok(f"{self.tracking_uri}/health", timeout=5.0):
            raise StackError(
                f"MLflow at {self.tracking_uri} is not reachable ({doing})",
                hint="start the stack with `loraops up` or fix stack.tracking_uri in params.yaml",
            )
        try:
            yield
        except MlflowException as exc:
            first = str(exc.message).strip().splitlines()[0] if exc.message else exc.error_code
            raise StageError(
                f"MLflow failed while {doing}: {first}", hint=f"see {self.tracking_uri}"
            ) from exc

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            name = self.params.experiment
            with self.errors(f"looking up experiment {name!r}"):
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    try:
                        self._experiment_id = self.client.create_experiment(name)
                    except MlflowException as exc:
                        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                            raise
                        found = self.client.get_experiment_by_name(name)
                        assert found is not None
                        self._experiment_id = found.experiment_id
                else:
                    if exp.lifecycle_stage == "deleted":
                        raise StageError(
                            f"MLflow experiment {name!r} is deleted",
                            hint="restore it in the MLflow UI or set registry.experiment to another name",
                        )
                    self._experiment_id = exp.experiment_id
        return self._experiment_id

    # -- runs -------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def run(self, run_name: str, tags: Mapping[str, Any] | None = None) -> Iterator[RunHandle]:
        """A new run, FINISHED when the block ends and FAILED (then re-raised) when it raises."""
        exp_id = self.experiment_id()
        with self.errors(f"creating run {run_name!r}"):
            created = self.client.create_run(exp_id, run_name=run_name, tags=flatten(tags or {}))
        handle = RunHandle(self, created.info.run_id, exp_id)
        try:
            yield handle
        except BaseException:
            with contextlib.suppress(MlflowException, StackError):
                self.client.set_terminated(handle.run_id, status="FAILED")
            raise
        with self.errors(f"closing run {handle.run_id}"):
            self.client.set_terminated(handle.run_id, status="FINISHED")

    def attach(self, run_id: str) -> RunHandle:
        """Log onto an existing run (e.g. evaluation metrics onto the training run of a candidate)."""
        with self.errors(f"looking up run {run_id}"):
            run = self.client.get_run(run_id)
        return RunHandle(self, run_id, run.info.experiment_id)

    # -- registry ---------------------------------------------------------------------------------------

    def _ensure_registered_model(self, served_on: str | None = None) -> None:
        name = self.params.model_name
        tags: dict[str, str] = {}
        try:
            tags = dict(self.client.get_registered_model(name).tags or {})
        except MlflowException as exc:
            if not _not_found(exc):
                raise
            try:
                self.client.create_registered_model(
                    name, description="LoRA adapters trained and registered by loraops."
                )
            except MlflowException as again:
                if again.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        if served_on is None:
            return
        wanted = {
            SERVED_ON_TAG: served_on,
            SERVED_ALIASES_TAG: json.dumps([self.params.champion_alias, self.params.challenger_alias]),
        }
        for key, value in wanted.items():
            if tags.get(key) != value:
                self.client.set_registered_model_tag(name, key, value)

    def register_adapter(
        self,
        run_id: str,
        artifact_path: str = "adapter",
        tags: Mapping[str, Any] | None = None,
        *,
        served_on: str | None = None,
    ) -> ModelVersionInfo:
        """Register the run's ``artifact_path`` directory as a new version of the model.

        ``served_on`` (the base model's served name) tags the registered model so that a serving stack
        of that base model serves it (``models_served_on``). ``create_model_version`` on the artifact URI
        is used because ``mlflow.register_model`` only accepts logged models, and an adapter is a plain
        directory of files.
        """
        with self.errors(f"registering run {run_id}'s {artifact_path!r} as {self.params.model_name}"):
            run = self.client.get_run(run_id)
            if not self.client.list_artifacts(run_id, artifact_path):
                raise StageError(
                    f"run {run_id} has no artifacts under {artifact_path!r}",
                    hint="log the adapter directory with run.log_artifacts(dir, 'adapter') first",
                )
            self._ensure_registered_model(served_on)
            mv = self.client.create_model_version(
                self.params.model_name,
                source=f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}",
                run_id=run_id,
                tags=flatten(tags or {}),
                run_link=self.run_url(run_id, run.info.experiment_id),
            )
        return _info(mv)

    def get_version(self, version: str) -> ModelVersionInfo:
        with self.errors(f"looking up {self.params.model_name} version {version}"):
            return _info(self.client.get_model_version(self.params.model_name, str(version)))

    def versions(self) -> list[ModelVersionInfo]:
        """All versions of the model, newest first, each with its aliases."""
        with self.errors(f"listing versions of {self.params.model_name}"):
            found = self.client.search_model_versions(f"name = '{self.params.model_name}'")
            # search results carry no aliases; the registered model has them all
            on: dict[str, list[str]] = {}
            if found:
                for alias, version in (
                    self.client.get_registered_model(self.params.model_name).aliases or {}
                ).items():
                    on.setdefault(str(version), []).append(alias)
        infos = (_info(mv) for mv in found)
        with_aliases = (replace(i, aliases=tuple(sorted(on.get(i.version, i.aliases)))) for i in infos)
        return sorted(with_aliases, key=lambda v: int(v.version), reverse=True)

    def tag_version(self, version: str, tags: Mapping[str, Any]) -> None:
        with self.errors(f"tagging {self.params.model_name} version {version}"):
            for key, value in flatten(tags).items():
                self.client.set_model_version_tag(self.params.model_name, str(version), key, value)

    def set_version_description(self, version: str, description: str) -> None:
        """The text the MLflow UI shows on the version page (what an engineer reads before an alias move)."""
        with self.errors(f"describing {self.params.model_name} version {version}"):
            self.client.update_model_version(self.params.model_name, str(version), description=description)

    def version_by_alias(self, alias: str) -> ModelVersionInfo | None:
        with self.errors(f"looking up alias {alias!r} of {self.params.model_name}"):
            try:
                mv = self.client.get_model_version_by_alias(self.params.model_name, alias)
            except MlflowException as exc:
                # Raised both when the model does not exist and when the alias is not set.
                if _not_found(exc) or exc.error_code == "INVALID_PARAMETER_VALUE":
                    return None
                raise
        return _info(mv)

    def champion(self) -> ModelVersionInfo | None:
        return self.version_by_alias(self.params.champion_alias)

    def set_alias(self, alias: str, version: str) -> None:
        with self.errors(f"pointing alias {alias!r} of {self.params.model_name} at version {version}"):
            self.client.set_registered_model_alias(self.params.model_name, alias, str(version))

    def set_champion(self, version: str) -> None:
        """Move the champion alias; MLflow then fires the webhook that redeploys the server."""
        self.set_alias(self.params.champion_alias, version)

    def clear_champion(self) -> None:
        """Remove the champion alias (no version is champion afterwards); a no-op when it is not set."""
        with self.errors(f"removing alias {self.params.champion_alias!r} of {self.params.model_name}"):
            try:
                self.client.delete_registered_model_alias(self.params.model_name, self.params.champion_alias)
            except MlflowException as exc:
                if not _not_found(exc):
                    raise

    def alias_history(self, alias: str) -> list[str]:
        """The versions ``alias`` served, oldest first (model tag ``loraops.history.<alias>``)."""
        with self.errors(f"reading the {alias} history of {self.params.model_name}"):
            try:
                tags = self.client.get_registered_model(self.params.model_name).tags or {}
            except MlflowException as exc:
                if _not_found(exc):
                    return []
                raise
        try:
            found = json.loads(tags.get(HISTORY_TAG + alias, "[]"))
        except ValueError:
            return []
        return [str(v) for v in found] if isinstance(found, list) else []

    def push_alias_history(self, alias: str, version: str, keep: int = 50) -> list[str]:
        """Append ``version`` to the alias history (unless it is already the last entry); keeps ``keep``."""
        history = self.alias_history(alias)
        if history and history[-1] == str(version):
            return history
        history = [*history, str(version)][-keep:]
        with self.errors(f"recording the {alias} history of {self.params.model_name}"):
            self.client.set_registered_model_tag(
                self.params.model_name, HISTORY_TAG + alias, json.dumps(history)
            )
        return history

    def download_adapter(self, version: str, dest: Path) -> Path:
        """Download the version's adapter directory to ``dest``, replacing what is there.

        The files land in a temporary sibling first and are renamed into place, so ``dest`` never
        holds a partial download.
        """
        info = self.get_version(version)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            with self.errors(f"downloading {self.params.model_name} version {version} from {info.source}"):
                got = Path(_download_uri(info.source, tmp, self.tracking_uri))
            if not got.is_dir():
                raise StageError(
                    f"{self.params.model_name} version {version} is a single file, not an adapter directory",
                    hint=f"its source is {info.source}",
                )
            publish_dir(got, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def download_run_file(self, run_id: str, path: str, dest_dir: Path) -> Path:
        """One artifact file of a run, downloaded into ``dest_dir``."""
        dest_dir.mkdir(parents=True, exist_ok=True)
        with self.errors(f"downloading {path} of run {run_id}"):
            return Path(self.client.download_artifacts(run_id, path, str(dest_dir)))

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) of a run's metric, in step order."""
        with self.errors(f"reading metric {key} of run {run_id}"):
            found = self.client.get_metric_history(run_id, key)
        return sorted((m.step, m.value) for m in found)

    # -- links ------------------------------------------------------------------------------------------

    def run_url(self, run_id: str, experiment_id: str | None = None) -> str:
        exp = experiment_id or self.experiment_id()
        return f"{self.tracking_uri}/#/experiments/{exp}/runs/{run_id}"

    def version_url(self, version: str) -> str:
        name = urllib.parse.quote(self.params.model_name, safe="")
        return f"{self.tracking_uri}/#/models/{name}/versions/{version}"

    def model_url(self) -> str:
        return f"{self.tracking_uri}/#/models/{urllib.parse.quote(self.params.model_name, safe='')}"

    # -- webhooks ---------------------------------------------------------------------------------------

    def ensure_webhook(self, url: str, secret: str) -> None:
        """Exactly one active webhook for ``url`` on alias moves and version tags, signed with ``secret``.

        The secret cannot be read back from MLflow, so an existing webhook gets it set again.
        """
        with self.errors(f"listing webhooks (for {url})"):
            try:
                hooks = list(self._all_webhooks())
            except MlflowException as exc:
                raise StackError(
                    f"MLflow at {self.tracking_uri} cannot read its webhooks: {exc.message}",
                    hint="the server's MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY changed since they were made; "
                    "restore the old key (.loraops/mlflow/webhook.key) or start with a fresh MLflow state",
                ) from exc
            mine = [h for h in hooks if h.url == url]
            if not mine:
                self.client.create_webhook(
                    WEBHOOK_NAME,
                    url,
                    events=list(WEBHOOK_EVENTS),  # type: ignore[arg-type]
                    description="loraops: serve the version the alias points at",
                    secret=secret,
                    status="ACTIVE",
                )
                return
            keep, *extra = mine
            self.client.update_webhook(
                keep.webhook_id,
                name=WEBHOOK_NAME,
                url=url,
                events=list(WEBHOOK_EVENTS),  # type: ignore[arg-type]
                secret=secret,
                status="ACTIVE",
            )
            for hook in extra:
                self.client.delete_webhook(hook.webhook_id)

    def _all_webhooks(self) -> Iterator[Any]:
        token: str | None = None
        while True:
            page = self.client.list_webhooks(max_results=100, page_token=token)
            yield from page
            token = page.token
            if not token:
                return


class HostedModelCatalog:
    """The registered models tagged for one base model, oldest first (the serving stack's catalog)."""

    def __init__(self, tracking_uri: str, base_model: str) -> None:
        self.tracking_uri = tracking_uri
        self.base_model = base_model
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def hosted_models(self) -> list[HostedModel]:
        found: list[Any] = []
        page_token = None
        query = f"tags.`{SERVED_ON_TAG}` = '{self.base_model.replace(chr(39), '')}'"
        while True:
            page = self.client.search_registered_models(
                filter_string=query, max_results=100, page_token=page_token
            )
            found.extend(page)
            page_token = page.token
            if not page_token:
                break
        found.sort(key=lambda m: (m.creation_timestamp or 0, m.name))
        return [hosted_model_of(m.name, dict(m.tags or {})) for m in found]


def hosted_model_of(name: str, tags: Mapping[str, str]) -> HostedModel:
    """The served model a registered model's tags describe (champion/challenger when not tagged)."""
    try:
        aliases = tuple(str(a) for a in json.loads(tags.get(SERVED_ALIASES_TAG, "[]")))
    except ValueError:
        aliases = ()
    if not aliases:
        aliases = ("champion", "challenger")
    return HostedModel(name, aliases[0], aliases)


def _download_uri(uri: str, dst: Path, tracking_uri: str) -> str:
    import mlflow.artifacts

    return str(
        mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking_uri)
    )
