"""The alias sync hook: signatures and events (pure), then real webhook deliveries from a real MLflow server.

The serving backend is a small recording object that implements the ServingBackend protocol (vLLM
itself is covered by the vLLM client's tests and the end-to-end demo).
"""

from __future__ import annotations

import json
import stat
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature

from loraops.registry.params import RegistryParams
from loraops.registry.server import WEBHOOK_CACHE_TTL_S
from loraops.registry.tracking import Registry
from loraops.serving.sync import (
    AliasEvent,
    AliasSync,
    SyncServer,
    hook_url,
    parse_alias_event,
    sign,
    sync_service_spec,
    verify_signature,
    webhook_secret,
)
from loraops.stack.process import ServiceManager, free_port
from loraops.workspace import Workspace

if TYPE_CHECKING:
    from fixtures_mlflow import MlflowServer

pytest_plugins = ["fixtures_mlflow"]

SECRET = "s3cret-for-tests"
BODY = json.dumps(
    {
        "entity": "model_version_alias",
        "action": "created",
        "timestamp": "2026-11-25T10:00:00+00:00",
        "data": {"name": "support-triage", "alias": "champion", "version": "3"},
    }
).encode()


# -- pure: signatures and events ------------------------------------------------------------------------


def test_signature_matches_mlflows_own_signer():
    ours = sign(SECRET, "d-1", "1795600000", BODY)
    assert ours == _generate_hmac_signature(SECRET, "d-1", "1795600000", BODY.decode())
    assert verify_signature(SECRET, "d-1", "1795600000", BODY, ours)


def test_signature_refuses_any_change():
    good = sign(SECRET, "d-1", "1795600000", BODY)
    assert not verify_signature("other", "d-1", "1795600000", BODY, good)
    assert not verify_signature(SECRET, "d-2", "1795600000", BODY, good)
    assert not verify_signature(SECRET, "d-1", "1795600001", BODY, good)
    assert not verify_signature(SECRET, "d-1", "1795600000", BODY + b" ", good)
    assert not verify_signature(SECRET, "d-1", "1795600000", BODY, good.replace("v1,", "v2,"))
    assert not verify_signature(SECRET, "d-1", "1795600000", BODY, "")
    assert not verify_signature("", "d-1", "1795600000", BODY, sign("", "d-1", "1795600000", BODY))


def test_signature_accepts_one_of_several_and_checks_age():
    good = sign(SECRET, "d-1", "1000", BODY)
    assert verify_signature(SECRET, "d-1", "1000", BODY, f"v1,AAAA {good}")
    assert verify_signature(SECRET, "d-1", "1000", BODY, good, now=1000 + 299)
    assert not verify_signature(SECRET, "d-1", "1000", BODY, good, now=1000 + 301)
    assert not verify_signature(SECRET, "d-1", "1000", BODY, good, now=1000 - 301)
    bad_ts = sign(SECRET, "d-1", "soon", BODY)
    assert not verify_signature(SECRET, "d-1", "soon", BODY, bad_ts, now=1000)


def test_parse_alias_event():
    assert parse_alias_event(BODY) == AliasEvent("support-triage", "champion", "3")
    other = json.loads(BODY)
    other["action"] = "deleted"
    assert parse_alias_event(json.dumps(other).encode()) is None
    other = json.loads(BODY)
    other["entity"] = "model_version"
    assert parse_alias_event(json.dumps(other).encode()) is None
    missing = json.loads(BODY)
    del missing["data"]["version"]
    assert parse_alias_event(json.dumps(missing).encode()) is None
    for junk in (
        b"",
        b"not json",
        b"[1, 2]",
        b'{"entity": "model_version_alias", "action": "created"}',
        b"\xff",
    ):
        assert parse_alias_event(junk) is None


# -- with a real MLflow server ------------------------------------------------------------------------------


class RecordingBackend:
    """Implements ServingBackend: remembers which path each name serves, like vLLM's /v1/models."""

    def __init__(self) -> None:
        self.served: dict[str, str] = {}
        self.loads: list[tuple[str, str]] = []
        self.fail_with: Exception | None = None
        self.failed_attempts = 0

    def load_adapter(self, name: str, path: str) -> None:
        if self.fail_with is not None:
            self.failed_attempts += 1
            raise self.fail_with
        if not (Path(path) / "adapter_config.json").is_file():
            raise FileNotFoundError(path)
        self.served[name] = path
        self.loads.append((name, path))

    def served_path(self, name: str) -> str | None:
        return self.served.get(name)


def make_adapter(path: Path, seed: str, *, valid: bool = True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if valid:
        (path / "adapter_config.json").write_text(json.dumps({"r": 8, "seed": seed}))
    (path / "adapter_model.safetensors").write_bytes(seed.encode() * 64)
    return path


@dataclass
class Setup:
    registry: Registry
    backend: RecordingBackend
    sync: AliasSync
    adapters_dir: Path
    tmp: Path

    def register(self, seed: str, *, valid: bool = True) -> str:
        with self.registry.run(f"train-{seed}") as run:
            run.log_artifacts(make_adapter(self.tmp / "src" / seed, seed, valid=valid), "adapter")
        return self.registry.register_adapter(run.run_id, tags={"seed": seed}).version


@pytest.fixture
def setup(mlflow_server: MlflowServer, tmp_path: Path) -> Setup:
    name = f"triage-{uuid.uuid4().hex[:8]}"
    params = RegistryParams.model_validate({"model_name": name, "experiment": f"exp-{name}"})
    registry = Registry(mlflow_server.url, params)
    backend = RecordingBackend()
    adapters = tmp_path / "adapters"
    return Setup(
        registry, backend, AliasSync(registry, backend, adapters, name, "champion"), adapters, tmp_path
    )


@dataclass
class RunningHook:
    url: str
    base: str
    server: SyncServer


@pytest.fixture
def hook(setup: Setup) -> Iterator[RunningHook]:
    """The hook's HTTP service in a thread, registered as the MLflow webhook; removed afterwards."""
    port = free_port()
    server = SyncServer(("127.0.0.1", port), setup.sync, SECRET)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = hook_url("127.0.0.1", port)
    setup.registry.ensure_webhook(url, SECRET)
    time.sleep(WEBHOOK_CACHE_TTL_S + 0.5)  # the server caches its webhook list this long
    try:
        yield RunningHook(url, f"http://127.0.0.1:{port}", server)
    finally:
        for h in setup.registry.client.list_webhooks(max_results=100):
            if h.url == url:
                setup.registry.client.delete_webhook(h.webhook_id)
        server.shutdown()
        server.server_close()


def wait_for(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout} s")


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (loopback)
        return json.loads(resp.read())


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.e2e
@pytest.mark.slow
def test_alias_moves_are_delivered_and_served(setup: Setup, hook: RunningHook):
    v1, v2 = setup.register("one"), setup.register("two")
    name = setup.registry.params.model_name

    setup.registry.set_champion(v1)
    wait_for(lambda: setup.backend.served_path(name) is not None)
    served = Path(setup.backend.served.get(name, ""))
    assert served == setup.adapters_dir.resolve() / name / f"v{v1}"
    assert json.loads((served / "adapter_config.json").read_text())["seed"] == "one"

    setup.registry.set_champion(v2)
    wait_for(lambda: setup.backend.served.get(name, "").endswith(f"/v{v2}"))
    assert json.loads((Path(setup.backend.served[name]) / "adapter_config.json").read_text())["seed"] == "two"
    assert setup.backend.loads == [
        (name, str(setup.sync.version_dir(v1))),
        (name, str(setup.sync.version_dir(v2))),
    ]

    status = get_json(f"{hook.base}/status")
    assert status["serving"]["version"] == v2
    assert (status["served_version"], status["error"]) == (v2, None)
    assert status["served_path"] == str(setup.sync.version_dir(v2))
    assert status["last"]["action"] == "loaded" and status["last"]["ok"] is True
    assert status["last"]["trigger"] == f"webhook: champion -> v{v2}"
    assert status["deliveries"]["accepted"] >= 2 and status["deliveries"]["rejected"] == 0
    assert get_json(f"{hook.base}/health") == {"ok": True}

    # Rolling back to v1 is another alias move; v1's copy was kept next to the one it replaced.
    setup.registry.set_champion(v1)
    wait_for(lambda: setup.backend.served.get(name, "").endswith(f"/v{v1}"))
    assert len(setup.backend.loads) == 3


@pytest.mark.e2e
@pytest.mark.slow
def test_bad_signatures_are_refused_and_change_nothing(setup: Setup, hook: RunningHook):
    name = setup.registry.params.model_name
    v1 = setup.register("one")
    body = json.dumps(
        {
            "entity": "model_version_alias",
            "action": "created",
            "data": {"name": name, "alias": "champion", "version": v1},
        }
    ).encode()
    ts = str(int(time.time()))
    code, doc = post(
        hook.url,
        body,
        {
            "X-MLflow-Delivery-Id": "d-1",
            "X-MLflow-Timestamp": ts,
            "X-MLflow-Signature": sign("wrong", "d-1", ts, body),
        },
    )
    assert (code, doc["error"]) == (401, "missing or invalid X-MLflow-Signature")
    code, _ = post(hook.url, body, {"Content-Type": "application/json"})
    assert code == 401

    # A real delivery signed with another secret: MLflow is told 401 and nothing is loaded.
    setup.registry.ensure_webhook(hook.url, "not-the-hook-secret")
    time.sleep(WEBHOOK_CACHE_TTL_S + 0.5)
    setup.registry.set_champion(v1)
    wait_for(lambda: get_json(f"{hook.base}/status")["deliveries"]["rejected"] >= 3)
    assert setup.backend.loads == []
    assert get_json(f"{hook.base}/status")["last"] is None

    # With the right signature the same body is acted on.
    code, doc = post(
        hook.url,
        body,
        {
            "X-MLflow-Delivery-Id": "d-2",
            "X-MLflow-Timestamp": ts,
            "X-MLflow-Signature": sign(SECRET, "d-2", ts, body),
        },
    )
    assert (code, doc["action"], doc["version"]) == (200, "loaded", v1)


@pytest.mark.e2e
@pytest.mark.slow
def test_events_for_other_models_are_ignored(setup: Setup, hook: RunningHook):
    result = setup.sync.handle(AliasEvent("another-model", "champion", "1"))
    assert result.action == "ignored"
    result = setup.sync.handle(AliasEvent(setup.registry.params.model_name, "challenger", "1"))
    assert result.action == "ignored"
    assert setup.backend.loads == [] and setup.sync.last is None
    # MLflow's "test webhook" button sends an example payload for another model: answered 200.
    hook_id = next(
        h.webhook_id for h in setup.registry.client.list_webhooks(max_results=100) if h.url == hook.url
    )
    tested = setup.registry.client.test_webhook(hook_id)
    assert tested.success and tested.response_status == 200
    assert json.loads(tested.response_body or "{}")["action"] == "ignored"


@pytest.mark.e2e
@pytest.mark.slow
def test_reconcile_heals_a_missed_event_and_is_a_no_op_after(setup: Setup):
    name = setup.registry.params.model_name
    assert setup.sync.reconcile().action == "no-target"
    v1, v2 = setup.register("one"), setup.register("two")
    setup.registry.set_champion(v1)
    assert setup.sync.reconcile().action == "loaded"
    # The hook was down when the alias moved: no delivery, the server still serves v1.
    setup.registry.set_champion(v2)
    assert setup.backend.served[name].endswith(f"/v{v1}")

    healed = setup.sync.reconcile(trigger="startup")
    assert (healed.action, healed.version, healed.trigger) == ("loaded", v2, "startup")
    assert setup.backend.served[name] == str(setup.sync.version_dir(v2))

    again = setup.sync.reconcile()
    assert (again.action, again.version) == ("unchanged", v2)
    assert len(setup.backend.loads) == 2

    # A restarted server serves nothing: the next reconcile loads the champion again, from the local copy.
    setup.backend.served.clear()
    assert setup.sync.reconcile().action == "loaded"
    assert setup.backend.served[name] == str(setup.sync.version_dir(v2))


@pytest.mark.e2e
@pytest.mark.slow
def test_failed_load_or_download_keeps_the_old_adapter(setup: Setup, hook: RunningHook):
    name = setup.registry.params.model_name
    v1, v2 = setup.register("one"), setup.register("two")
    broken = setup.register("broken", valid=False)
    setup.registry.set_champion(v1)
    wait_for(lambda: setup.backend.served.get(name, "").endswith(f"/v{v1}"))

    # The server refuses the new adapter: error recorded, v1 keeps serving, MLflow gets a 500 and retries.
    setup.backend.fail_with = RuntimeError("vLLM answered 404: adapter not found")
    setup.registry.set_champion(v2)
    wait_for(lambda: setup.backend.failed_attempts >= 2)
    status = get_json(f"{hook.base}/status")
    assert status["last_failure"]["version"] == v2
    assert status["last_failure"]["error"] == "RuntimeError: vLLM answered 404: adapter not found"
    assert status["serving"]["version"] == v1
    assert setup.backend.served[name].endswith(f"/v{v1}")

    # Once the server accepts it again, a reconcile (or a later retry of the delivery) serves v2.
    setup.backend.fail_with = None
    assert setup.sync.reconcile().action in ("loaded", "unchanged")
    assert setup.backend.served[name] == str(setup.sync.version_dir(v2))

    # A version that is not an adapter is never handed to the server.
    setup.registry.set_champion(broken)
    wait_for(lambda: (get_json(f"{hook.base}/status")["last_failure"] or {}).get("version") == broken)
    assert "not a LoRA adapter" in get_json(f"{hook.base}/status")["last_failure"]["error"]
    assert setup.backend.served[name].endswith(f"/v{v2}")
    ts = str(int(time.time()))
    body = json.dumps(
        {
            "entity": "model_version_alias",
            "action": "created",
            "data": {"name": name, "alias": "champion", "version": broken},
        }
    ).encode()
    headers = {
        "X-MLflow-Delivery-Id": "d-9",
        "X-MLflow-Timestamp": ts,
        "X-MLflow-Signature": sign(SECRET, "d-9", ts, body),
    }
    code, doc = post(hook.url, body, headers)
    assert code == 500 and doc["action"] == "failed" and doc["version"] == broken
    assert get_json(f"{hook.base}/status")["serving"]["version"] == v2


@pytest.mark.e2e
@pytest.mark.slow
def test_service_process_registers_its_webhook_and_reports_errors(setup: Setup, tmp_path: Path):
    """`python -m loraops.serving.sync` as a managed service; vLLM is down, so every sync must fail."""
    name = setup.registry.params.model_name
    v1, v2 = setup.register("one"), setup.register("two")
    setup.registry.set_champion(v1)
    ws = Workspace(tmp_path / "ws")
    ws.ensure()
    secret_file = ws.state / "serving" / "webhook.secret"
    port, dead_vllm = free_port(), f"http://127.0.0.1:{free_port()}"
    spec = sync_service_spec(
        state_dir=ws.state,
        port=port,
        tracking_uri=setup.registry.tracking_uri,
        vllm_url=dead_vllm,
        model_name=name,
        alias="champion",
        secret_file=secret_file,
        adapters_dir=ws.serving_adapters,
        max_lora_rank=16,
    )
    manager = ServiceManager(ws.state)
    manager.start(spec)
    url, base = hook_url("127.0.0.1", port), f"http://127.0.0.1:{port}"
    try:
        # The start-up round registered the webhook, then reconciled: found the champion, no vLLM.
        wait_for(lambda: get_json(f"{base}/status")["last"] is not None)
        status = get_json(f"{base}/status")
        assert status["webhook"] == {"registered": True, "error": None}
        assert [h.url for h in setup.registry.client.list_webhooks(max_results=100)].count(url) == 1
        assert (status["last"]["action"], status["last"]["trigger"]) == ("failed", "startup")
        assert "vLLM server" in status["error"] and "unreachable" in status["error"]
        assert status["served_version"] is None
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600  # made by the service
        assert webhook_secret(secret_file) == secret_file.read_text().strip()

        time.sleep(WEBHOOK_CACHE_TTL_S + 0.5)
        setup.registry.set_champion(v2)
        wait_for(lambda: get_json(f"{base}/status")["last"]["trigger"] == f"webhook: champion -> v{v2}")
        status = get_json(f"{base}/status")
        assert status["deliveries"]["accepted"] >= 1 and status["deliveries"]["rejected"] == 0
        assert status["last"]["version"] == v2 and status["serving"] is None
    finally:
        for h in setup.registry.client.list_webhooks(max_results=100):
            if h.url == url:
                setup.registry.client.delete_webhook(h.webhook_id)
        assert manager.stop("sync")
    assert manager.get("sync") is None
