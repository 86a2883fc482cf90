"""Runs in the trainer environment: token lengths of records as Axolotl itself computes them.

Usage: python axolotl_lengths.py IN.json OUT.json, IN = {"model_dir", "format", "sequence_len", "records"}.
"""

from __future__ import annotations

import json
import sys


def main(inp: str, out: str) -> None:
    from axolotl.prompt_tokenizers import AlpacaPromptTokenizingStrategy
    from axolotl.prompters import AlpacaPrompter
    from axolotl.utils.dict import DictDefault
    from transformers import AutoTokenizer

    job = json.loads(open(inp, encoding="utf-8").read())
    tokenizer = AutoTokenizer.from_pretrained(job["model_dir"])
    # Long enough that Axolotl's own truncation never hides a length.
    seq = 100_000
    if job["format"] == "alpaca":
        strategy = AlpacaPromptTokenizingStrategy(AlpacaPrompter(None), tokenizer, False, seq)
    else:
        from axolotl.prompt_strategies.chat_template import load

        cfg = DictDefault({"sequence_len": seq, "train_on_inputs": False, "chat_template": "tokenizer_default"})
        strategy = load(tokenizer, cfg, {"type": "chat_template", "field_messages": "messages"})
    lengths = [len(strategy.tokenize_prompt(r)["input_ids"]) for r in job["records"]]
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(lengths, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
