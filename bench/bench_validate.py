"""Benchmark: validation + token-length check of a generated JSONL file, against raw `tokenizers`.

The physical limit of this step is encoding the texts with the tokenizer; this measures, in the same
run, (a) `tokenizers` batch encoding of exactly the texts loraops counts (the alpaca prompt and the
response of every example, already in memory) and (b) the whole `loraops data validate` pass over the
file (read, UTF-8, JSON, schema checks, normalisation, duplicate keys, statistics, token counts). It
prints examples/s of both, their ratio (target >= 0.5) and the peak RSS of the validation pass (run in
a fresh process so that the baseline's memory does not count).

    .venv/bin/python bench/bench_validate.py [--examples 200000] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
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
    words = "please account order refund broken login slow crash invoice delivery screen app".split()
    with path.open("w", encoding="utf-8") as fh:
        for i, rec in enumerate(generate_tickets(n, seed=11)):
            extra = " ".join(rng.choice(words) for _ in range(rng.randint(0, 40)))
            rec["instruction"] = f"{rec['instruction']} {extra} (ref {i})"
            fh.write(json.dumps(rec) + "\n")


def baseline(path: Path, model_dir: Path) -> tuple[float, int]:
    """Seconds for raw `tokenizers` batch encoding of the same texts (already parsed, in memory)."""
    from tokenizers import Tokenizer

    from loraops.prompts import alpaca_prompt

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    prompts, responses = [], []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            prompts.append(alpaca_prompt(r["instruction"], r["input"]))
            responses.append(r["output"])
    best = float("inf")
    tokens = 0
    for _ in range(2):
        t0 = time.perf_counter()
        tokens = 0
        for i in range(0, len(prompts), 1024):
            for e in tok.encode_batch_fast(prompts[i : i + 1024]):
                tokens += len(e.ids)
            for e in tok.encode_batch_fast(responses[i : i + 1024]):
                tokens += len(e.ids)
        best = min(best, time.perf_counter() - t0)
    return best, tokens


def run_validation(path: Path, model_dir: Path) -> dict[str, float | int]:
    """The validate pass in this (fresh) process; prints its own timing and peak RSS as JSON."""
    from loraops.data.params import DataParams
    from loraops.data.tokens import TokenCounter
    from loraops.data.validate import scan

    t0 = time.perf_counter()
    result = scan(path, DataParams(), counter=TokenCounter(model_dir), sequence_len=4096)
    seconds = time.perf_counter() - t0
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": seconds,
        "examples": result.examples,
        "errors": result.issues.errors,
        "tokens_p50": result.tokens.quantile(0.5),
        "peak_rss_mib": round(rss_kib / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--examples", type=int, default=200_000)
    ap.add_argument("--model-dir", type=Path, help="tokenizer dir (default: train one like the base model's)")
    ap.add_argument("--_child", nargs=2, metavar=("DATA", "MODEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(run_validation(Path(args._child[0]), Path(args._child[1]))))
        return
    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        work = Path(tmp)
        model_dir = args.model_dir or make_tokenizer(work / "tok")
        data = work / "data.jsonl"
        make_data(data, args.examples)
        size_mb = data.stat().st_size / 1e6
        child = subprocess.run(
            [sys.executable, __file__, "--_child", str(data), str(model_dir)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        val = json.loads(child.stdout.strip().splitlines()[-1])
        base_s, tokens = baseline(data, model_dir)
    n = args.examples
    ratio = base_s / float(val["seconds"])
    print(f"file: {n} examples, {size_mb:.1f} MB, {tokens} tokens ({tokens / n:.0f}/example), {os.cpu_count()} CPUs")
    print(f"raw tokenizers encode_batch_fast : {n / base_s:10.0f} examples/s ({base_s:.2f} s)")
    print(f"loraops validate (+token lengths): {n / float(val['seconds']):10.0f} examples/s ({val['seconds']:.2f} s)")
    print(f"ratio to the tokenizer limit      : {ratio:.2f}  (target >= 0.5)")
    print(f"peak RSS of the validate process  : {val['peak_rss_mib']} MiB")
    if val["examples"] != n or val["errors"]:
        raise SystemExit(f"unexpected validation result: {val}")


if __name__ == "__main__":
    main()
