"""Trainer-environment half of the base-model build (needs torch and transformers).

Run as ``python -m loraops.basemodel._materialize init|evaluate ...`` by loraops.basemodel.build:

* ``init``: trains the tokenizer on the corpus, saves it as a PreTrainedTokenizerFast with the chat
  template, and saves a seeded random-init LlamaForCausalLM next to it; writes token-length stats.
* ``evaluate``: greedy generation on the general suite; per-skill exact-match accuracy and the share
  of answers that ended with EOS (generation must stop by itself for serving).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from loraops.basemodel.recipe import BaseModelRecipe
from loraops.basemodel.skills import SKILLS, tokenizer_texts
from loraops.basemodel.tokenizer import BOS, EOS, PAD, alpaca_token_count, corpus_tokenizer
from loraops.prompts import CHAT_TEMPLATE, alpaca_prompt

SAMPLES_PER_SKILL = 3  # answers kept in build_report.json, to see what the model does


def _read_jsonl(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def init(recipe: BaseModelRecipe, corpus: list[dict[str, str]], out: Path) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    started = time.perf_counter()
    tok = corpus_tokenizer(corpus, tokenizer_texts(), recipe.vocab_size)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=recipe.max_position_embeddings,
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(out)

    lengths: dict[str, int] = defaultdict(int)
    for record in corpus:
        n = alpaca_token_count(tok, record)
        lengths[record["skill"]] = max(lengths[record["skill"]], n)

    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_heads,
        head_dim=recipe.head_dim,
        max_position_embeddings=recipe.max_position_embeddings,
        rope_theta=recipe.rope_theta,
        initializer_range=recipe.init_std,
        tie_word_embeddings=True,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(recipe.seed)
    model = LlamaForCausalLM(config)
    model.generation_config.do_sample = False
    model.save_pretrained(out, safe_serialization=True)
    return {
        "vocab_size": tok.get_vocab_size(),
        "max_tokens_by_skill": dict(lengths),
        "param_count": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.perf_counter() - started, 2),
    }


def evaluate(model_dir: Path, suite: list[dict[str, str]], batch_size: int = 64) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    by_skill: dict[str, list[dict[str, str]]] = defaultdict(list)
    for record in suite:
        by_skill[record["skill"]].append(record)

    per_skill: dict[str, dict[str, Any]] = {}
    samples: list[dict[str, Any]] = []
    for skill, records in by_skill.items():
        max_new = SKILLS[skill].max_new_tokens
        correct = stopped = shown = 0
        for start in range(0, len(records), batch_size):
            batch = records[start : start + batch_size]
            prompts = [alpaca_prompt(r["instruction"], r.get("input", "")) for r in batch]
            enc = tok(prompts, return_tensors="pt", padding=True)
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    do_sample=False,
                    max_new_tokens=max_new,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                )
            new_tokens = out[:, enc["input_ids"].shape[1] :]
            for record, ids in zip(batch, new_tokens.tolist(), strict=True):
                ended = tok.eos_token_id in ids
                text = tok.decode(ids, skip_special_tokens=True).strip()
                ok = text == record["output"]
                correct += ok
                stopped += ended
                if shown < SAMPLES_PER_SKILL:
                    shown += 1
                    samples.append(
                        {
                            "skill": skill,
                            "instruction": record["instruction"],
                            "expected": record["output"],
                            "got": text,
                            "stopped": ended,
                        }
                    )
        per_skill[skill] = {
            "n": len(records),
            "exact_match": round(correct / len(records), 4),
            "stopped_with_eos": round(stopped / len(records), 4),
        }
    return {
        "per_skill": per_skill,
        "mean_exact_match": round(sum(v["exact_match"] for v in per_skill.values()) / len(per_skill), 4),
        "samples": samples,
        "seconds": round(time.perf_counter() - started, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loraops.basemodel._materialize")
    sub = parser.add_subparsers(dest="command", required=True)
    p_init = sub.add_parser("init", help="train the tokenizer and save the random-init model")
    p_init.add_argument("--recipe", type=Path, required=True)
    p_init.add_argument("--corpus", type=Path, required=True)
    p_init.add_argument("--out", type=Path, required=True)
    p_init.add_argument("--stats", type=Path, required=True)
    p_eval = sub.add_parser("evaluate", help="greedy exact-match on the general suite")
    p_eval.add_argument("--model", type=Path, required=True)
    p_eval.add_argument("--suite", type=Path, required=True)
    p_eval.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.command == "init":
        recipe = BaseModelRecipe.model_validate_json(args.recipe.read_text(encoding="utf-8"))
        stats = init(recipe, _read_jsonl(args.corpus), args.out)
        args.stats.write_text(json.dumps(stats, indent=2), encoding="utf-8")
    else:
        metrics = evaluate(args.model, _read_jsonl(args.suite))
        args.out.write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        print(json.dumps({k: v for k, v in metrics.items() if k != "samples"}))


if __name__ == "__main__":
    main()
