"""Runs in the trainer environment: token lengths of records as Axolotl itself computes them.

Usage: python axolotl_lengths.py JOBS.json OUT.json, where JOBS is a list of
{"model_dir", "format": "alpaca"|"chat", "records"} and OUT gets one list of lengths per job.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def lengths(job: dict[str, Any]) -> list[int]:
    from axolotl.prompt_tokenizers import AlpacaPromptTokenizingStrategy
    from axolotl.prompters import AlpacaPrompter
    from axolotl.utils.dict import DictDefault
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(job["model_dir"])
    seq = 100_000  # long enough that Axolotl's own truncation never hides a length
    if job["format"] == "alpaca":
        # What Axolotl does for `type: alpaca` (utils/data/wrappers.py, _handle_alpaca_dataset).
        strategy = AlpacaPromptTokenizingStrategy(AlpacaPrompter(None), tokenizer, False, seq)
    else:
        from axolotl.prompt_strategies.chat_template import load

        cfg = DictDefault(
            {"sequence_len": seq, "train_on_inputs": False, "chat_template": "tokenizer_default"}
        )
        strategy = load(tokenizer, cfg, {"type": "chat_template", "field_messages": "messages"})
    return [len(strategy.tokenize_prompt(r)["input_ids"]) for r in job["records"]]


def main(jobs_file: str, out_file: str) -> None:
    jobs = json.loads(Path(jobs_file).read_text("utf-8"))
    Path(out_file).write_text(json.dumps([lengths(job) for job in jobs]), "utf-8")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
