"""The MLflow adapter against a real MLflow 3.17 server (SQLite backend, server-side artifacts)."""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pydantic import ValidationError

from loraops.errors import StackError, StageError
from loraops.registry.params import RegistryParams
from loraops.registry.server import mlflow_service_spec, webhook_encryption_key
from loraops.registry.tracking import Registry, flatten
from loraops.services import free_port

if TYPE_CHECKING:
    from fixtures_mlflow import MlflowServer

pytest_plugins = ["fixtures_mlflow"]


def make_adapter(path: Path, seed: str) -> Path:
    """A directory shaped like a PEFT adapter, with content that differs per ``seed``."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA", "seed": seed}))
    (path / "adapter_model.safetensors").write_bytes(seed.encode() * 100)
    (path / "extra").mkdir(exist_ok=True)
    (path / "extra" / "notes.txt").write_text(f"trained with {seed}")
    return path


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def new_registry(server: MlflowServer) -> Registry:
    name = f"model-{uuid.uuid4().hex[:8]}"
    return Registry(
        server.url, RegistryParams.model_validate({"model_name": name, "experiment": f"exp-{name}"})
    )


# -- no server needed ---------------------------------------------------------------------------------


def test_params_refuse_reserved_alias_and_unknown_keys():
    assert RegistryParams().champion_alias == "champion"
    for bad in ("latest", "v3", "has space"):
        with pytest.raises(ValidationError):
            RegistryParams.model_validate({"champion_alias": bad})
    with pytest.raises(ValidationError):
        RegistryParams.model_validate({"modle_name": "x"})


def test_flatten_nested_params():
    assert flatten({"train": {"lora_r": 8, "lr": 0.002}, "seed": 1, "note": None}) == {
        "train.lora_r": "8",
        "train.lr": "0.002",
        "seed": "1",
        "note": "",
    }


def test_service_spec_keeps_one_webhook_key(tmp_path: Path):
    spec = mlflow_service_spec(tmp_path, 5123)
    key_file = tmp_path / "mlflow" / "webhook.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = spec.env["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"]
    assert len(key) == 44 and key == key_file.read_text().strip()
    # A second start (a restart) must reuse the key, or stored webhooks stop working.
    assert mlflow_service_spec(tmp_path, 5123).env["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"] == key
    assert webhook_encryption_key(tmp_path) == key
    assert spec.env["MLFLOW_WEBHOOK_ALLOWED_SCHEMES"] == "http,https"
    assert spec.env["MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS"] == "true"
    command = [str(c) for c in spec.command]
    assert f"sqlite:///{(tmp_path / 'mlflow' / 'mlflow.db').resolve()}" in command
    assert command[command.index("--artifacts-destination") + 1] == str(tmp_path / "mlflow" / "artifacts")
    assert spec.health_url == "http://127.0.0.1:5123/health"
    assert spec.config_key == "stack.mlflow_port"


def test_fernet_key_is_accepted_by_cryptography(tmp_path: Path):
    from cryptography.fernet import Fernet

    key = webhook_encryption_key(tmp_path)
    assert Fernet(key.encode()).decrypt(Fernet(key.encode()).encrypt(b"secret")) == b"secret"


@pytest.mark.timeout(30)  # MLflow's own client retries for minutes: the check before it must not
def test_unreachable_server_fails_fast_with_a_hint():
    registry = Registry(f"http://127.0.0.1:{free_port()}", RegistryParams())
    with pytest.raises(StackError, match="not reachable") as err:
        registry.champion()
    assert err.value.hint and "loraops up" in err.value.hint


# -- real MLflow server -----------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow
def test_run_logs_params_metrics_tags_and_artifacts(mlflow_server: MlflowServer, tmp_path: Path):
    registry = new_registry(mlflow_server)
    adapter = make_adapter(tmp_path / "out", "a")
    with registry.run("train-1", tags={"loraops.stage": "train"}) as run:
        run.log_params({"train": {"lora_r": 8}, "data_version": "abc123"})
        run.log_metrics({"train_loss": 1.5}, step=1)
        run.log_metrics({"train_loss": 0.5}, step=2)
        run.set_tags({"git_commit": "deadbeef"})
        run.log_artifacts(adapter, "adapter")
        run_id = run.run_id
        url = run.url

    got = registry.client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert got.info.run_name == "train-1"
    assert got.data.params == {"train.lora_r": "8", "data_version": "abc123"}
    assert got.data.metrics["train_loss"] == 0.5
    history = registry.client.get_metric_history(run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.5), (2, 0.5)]
    assert got.data.tags["git_commit"] == "deadbeef"
    assert got.data.tags["loraops.stage"] == "train"
    names = {a.path for a in registry.client.list_artifacts(run_id, "adapter")}
    assert names == {"adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/extra"}
    assert url == f"{mlflow_server.url}/#/experiments/{got.info.experiment_id}/runs/{run_id}"

    # Metrics logged later (evaluation) land on the same run.
    registry.attach(run_id).log_metrics({"task_score": 0.9})
    assert registry.client.get_run(run_id).data.metrics["task_score"] == 0.9


@pytest.mark.e2e
@pytest.mark.slow
def test_run_that_raises_is_marked_failed(mlflow_server: MlflowServer):
    registry = new_registry(mlflow_server)
    with pytest.raises(RuntimeError, match="boom"), registry.run("broken") as run:
        run.log_metrics({"x": 1.0})
        raise RuntimeError("boom")
    assert registry.client.get_run(run.run_id).info.status == "FAILED"


@pytest.mark.e2e
@pytest.mark.slow
def test_register_versions_move_champion_and_download(mlflow_server: MlflowServer, tmp_path: Path):
    registry = new_registry(mlflow_server)
    assert registry.champion() is None  # the model does not even exist yet

    versions = []
    for seed in ("first", "second"):
        with registry.run(f"train-{seed}") as run:
            run.log_artifacts(make_adapter(tmp_path / seed, seed), "adapter")
        lineage = {
            "data_version": f"md5-{seed}",
            "base_model": "tiny-llama@sha256:00",
            "params": {"lora_r": 8},
        }
        versions.append(registry.register_adapter(run.run_id, tags=lineage))
    v1, v2 = versions

    assert (v1.version, v2.version) == ("1", "2")
    assert v2.name == registry.params.model_name
    assert v2.run_id is not None and v2.source.endswith(f"/{v2.run_id}/artifacts/adapter")
    assert v2.tags == {
        "data_version": "md5-second",
        "base_model": "tiny-llama@sha256:00",
        "params.lora_r": "8",
    }
    assert registry.get_version("1").tags["data_version"] == "md5-first"
    assert [v.version for v in registry.versions()] == ["2", "1"]
    # The version links back to its run in the UI.
    assert registry.client.get_model_version(v1.name, "1").run_link == registry.run_url(v1.run_id or "")

    assert registry.champion() is None
    registry.set_champion("1")
    champ = registry.champion()
    assert champ is not None and champ.version == "1" and champ.aliases == ("champion",)
    registry.set_champion("2")
    champ = registry.champion()
    assert champ is not None and champ.version == "2" and champ.run_id == v2.run_id
    assert registry.get_version("1").aliases == ()

    registry.clear_champion()
    assert registry.champion() is None
    registry.clear_champion()  # nothing to clear: not an error
    registry.set_champion("2")

    registry.tag_version("2", {"gate": "passed"})
    assert registry.get_version("2").tags["gate"] == "passed"

    dest = tmp_path / "serving" / "v2"
    assert registry.download_adapter("2", dest) == dest
    assert tree(dest) == tree(tmp_path / "second")
    # Downloading over an existing copy replaces it whole and leaves no temporary directories behind.
    (dest / "stale.txt").write_text("left over")
    registry.download_adapter("1", dest)
    assert tree(dest) == tree(tmp_path / "first")
    assert [p.name for p in dest.parent.iterdir()] == ["v2"]

    assert (
        registry.version_url("2") == f"{mlflow_server.url}/#/models/{registry.params.model_name}/versions/2"
    )


@pytest.mark.e2e
@pytest.mark.slow
def test_register_and_alias_errors_are_stage_errors(mlflow_server: MlflowServer):
    registry = new_registry(mlflow_server)
    with registry.run("no-adapter") as run:
        run.log_metrics({"x": 1.0})
    with pytest.raises(StageError, match="no artifacts under 'adapter'"):
        registry.register_adapter(run.run_id)
    with pytest.raises(StageError, match="pointing alias 'champion'"):
        registry.set_champion("7")


@pytest.mark.e2e
@pytest.mark.slow
def test_ensure_webhook_is_idempotent_per_url(mlflow_server: MlflowServer):
    registry = new_registry(mlflow_server)
    url = f"http://127.0.0.1:{free_port()}/hooks/mlflow"

    def mine() -> list:
        return [h for h in registry.client.list_webhooks(max_results=100) if h.url == url]

    try:
        registry.ensure_webhook(url, "s1")
        registry.ensure_webhook(url, "s2")
        hooks = mine()
        assert len(hooks) == 1
        assert [str(e) for e in hooks[0].events] == [
            "model_version_alias.created",
            "model_version_alias.deleted",
            "model_version_tag.set",  # a gate verdict warms the version
        ]
        assert str(hooks[0].status) == "ACTIVE"
        # A duplicate made by hand is removed on the next ensure.
        registry.client.create_webhook("dup", url, events=["model_version_alias.created"], secret="x")
        registry.ensure_webhook(url, "s3")
        assert len(mine()) == 1
    finally:
        for hook in mine():
            registry.client.delete_webhook(hook.webhook_id)
