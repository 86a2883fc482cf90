"""Benchmark: validation + token-length check of a generated JSONL file, against raw `tokenizers`.

The physical limit of this step is encoding the texts with the tokenizer; this measures, in the same
run, (a) `tokenizers` batch encoding of exactly the texts loraops counts (the alpaca prompt and the
response of every example, already in memory) and (b) the whole `loraops data validate` pass over the
file (read, UTF-8, JSON, schema checks, normalisation, duplicate keys, statistics, token counts). It
prints examples/s of both, their ratio (target >= 0.5), the same ratio in CPU time (steadier on a
shared machine) and the peak RSS of the validation pass. Each runs in a fresh process, alternately,
and the best of ``--rounds`` runs of each is kept.

    .venv/bin/python bench/bench_validate.py [--examples 200000] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_tokenizer(out: Path) -> Path:
    """A tokenizer like the built base model's (loraops.basemodel.tokenizer), trained on demo tickets."""
    from loraops.basemodel.tokenizer import BOS, EOS, PAD, alpaca_text, train_tokenizer
    from loraops.data.demo import generate_tickets
    from loraops.prompts import CHAT_TEMPLATE

    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer([alpaca_text(r) for r in generate_tickets(3000, seed=1)], vocab_size=1024)
    tok.save(str(out / "tokenizer.json"))
    config = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "chat_template": CHAT_TEMPLATE}
    (out / "tokenizer_config.json").write_text(json.dumps(config), "utf-8")
    return out


def make_data(path: Path, n: int) -> None:
    """Demo support tickets with varied extra text, so lengths and duplicates look like real data."""
    from loraops.data.demo import generate_tickets

    rng = random.Random(3)
    words = [
        "please",
        "account",
        "order",
        "refund",
        "broken",
        "login",
        "slow",
        "crash",
        "invoice",
        "delivery",
        "screen",
        "app",
    ]
    with path.open("w", encoding="utf-8") as fh:
        for i, rec in enumerate(generate_tickets(n, seed=11)):
            extra = " ".join(rng.choice(words) for _ in range(rng.randint(0, 40)))
            rec["instruction"] = f"{rec['instruction']} {extra} (ref {i})"
            fh.write(json.dumps(rec) + "\n")


def baseline(path: Path, model_dir: Path) -> dict[str, float | int]:
    """Raw `tokenizers` batch encoding of the same texts, parsed beforehand (not timed)."""
    from tokenizers import Tokenizer

    from loraops.prompts import alpaca_prompt

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    prompts, responses = [], []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            prompts.append(alpaca_prompt(r["instruction"], r["input"]))
            responses.append(r["output"])
    t0, c0 = time.perf_counter(), time.process_time()
    tokens = 0
    for i in range(0, len(prompts), 1024):
        for e in tok.encode_batch_fast(prompts[i : i + 1024]):
            tokens += len(e)
        for e in tok.encode_batch_fast(responses[i : i + 1024]):
            tokens += len(e)
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "tokens": tokens}


def run_validation(path: Path, model_dir: Path) -> dict[str, float | int]:
    """The validate pass in this (fresh) process; prints its own timing and peak RSS as JSON."""
    from loraops.data.params import DataParams
    from loraops.data.tokens import TokenCounter
    from loraops.data.validate import scan

    t0, c0 = time.perf_counter(), time.process_time()
    result = scan(path, DataParams(), counter=TokenCounter(model_dir), sequence_len=4096)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    # VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork + exec.
    with Path("/proc/self/status").open(encoding="ascii") as fh:
        rss_kib = int(next(ln for ln in fh if ln.startswith("VmHWM")).split()[1])
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "examples": result.examples,
        "errors": result.issues.errors,
        "tokens_p50": result.tokens.quantile(0.5),
        "peak_rss_mib": round(rss_kib / 1024, 1),
    }


def _child(kind: str, data: Path, model_dir: Path) -> dict[str, float | int]:
    out = subprocess.run(
        [sys.executable, __file__, "--_child", kind, str(data), str(model_dir)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    result: dict[str, float | int] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--examples", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=2, help="alternating runs of each; the best is kept")
    ap.add_argument("--model-dir", type=Path, help="tokenizer dir (default: train one like the base model's)")
    ap.add_argument("--_child", nargs=3, metavar=("KIND", "DATA", "MODEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        kind, data_s, model_s = args._child
        run = run_validation if kind == "validate" else baseline
        print(json.dumps(run(Path(data_s), Path(model_s))))
        return
    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        work = Path(tmp)
        model_dir = args.model_dir or make_tokenizer(work / "tok")
        data = work / "data.jsonl"
        make_data(data, args.examples)
        size_mb = data.stat().st_size / 1e6
        # Alternate fresh processes, so that load from elsewhere on the machine hits both alike.
        vals, bases = [], []
        for _ in range(args.rounds):
            bases.append(_child("baseline", data, model_dir))
            vals.append(_child("validate", data, model_dir))
    n = args.examples
    val = min(vals, key=lambda v: v["seconds"])
    base_s = min(float(b["seconds"]) for b in bases)
    val_s = float(val["seconds"])
    tokens = int(bases[0]["tokens"])
    cpus = os.cpu_count()
    print(f"file: {n} examples, {size_mb:.1f} MB, {tokens} tokens ({tokens / n:.0f}/example), {cpus} CPUs")
    best = f"best of {args.rounds}"
    print(f"raw tokenizers encode_batch_fast : {n / base_s:10.0f} examples/s ({base_s:.2f} s, {best})")
    print(f"loraops validate (+token lengths): {n / val_s:10.0f} examples/s ({val_s:.2f} s, {best})")
    print(f"ratio to the tokenizer limit      : {base_s / val_s:.2f}  (target >= 0.5)")
    base_cpu = min(float(b["cpu_seconds"]) for b in bases)
    val_cpu = min(float(v["cpu_seconds"]) for v in vals)
    cpu = f"{base_cpu:.1f} / {val_cpu:.1f} CPU s"
    print(f"same ratio in CPU time            : {base_cpu / val_cpu:.2f}  ({cpu})")
    print(f"peak RSS of the validate process  : {max(float(v['peak_rss_mib']) for v in vals)} MiB")
    if val["examples"] != n or val["errors"]:
        raise SystemExit(f"unexpected validation result: {val}")


if __name__ == "__main__":
    main()
