"""Runs in the trainer environment: a GGUF file -> a Hugging Face model directory (safetensors).

transformers (with the ``gguf`` package) dequantizes the weights and reads the tokenizer and its chat
template from the GGUF metadata. A model loaded from GGUF carries a quantizer that ``save_pretrained``
refuses; the weights are plain tensors by then, so it is dropped, and so is the ``quantization_config``
key (Axolotl 0.19 reads a null one as a config and fails). The tokenizer's special tokens are set from
the ids the GGUF declares (the model config's): transformers 5.16 names ``<|im_start|>`` as SmolLM2's end
of sequence, where the GGUF says ``<|im_end|>``; trained that way, an adapter never learns to stop.
A SentencePiece-BPE vocabulary without merges (Gemma's GGUF stores merge ranks as scores) comes back from
transformers 5.16 as a Unigram model over those scores, which splits "Instruction" into 5 pieces, and
``GemmaTokenizer`` reloads it as a BPE without merges, one token per character: it is rebuilt as a BPE
whose merges are ordered by the scores, as SentencePiece applies them. ``conversion.json`` is written
last.

    python -m loraops.basemodel._convert_gguf FILE.gguf --dtype float32 --out DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def bpe_from_scores(state: dict[str, Any], keep_whole: set[str]) -> dict[str, Any]:
    """A tokenizer.json state whose Unigram model (pieces with merge-rank scores) becomes the equivalent
    BPE: a merge for every split of a piece into two pieces, the merges of higher-scored pieces first.
    Pieces in ``keep_whole`` (special tokens) and byte pieces (``<0x41>``) get no merge."""
    pieces: list[tuple[str, float]] = [(piece, float(score)) for piece, score in state["model"]["vocab"]]
    ids = {piece: i for i, (piece, _) in enumerate(pieces)}
    scores = dict(pieces)
    ranked: list[tuple[float, float, float, str, str]] = []
    for piece, score in pieces:
        if piece in keep_whole or (piece.startswith("<0x") and piece.endswith(">")):
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                ranked.append((-score, -scores[left], -scores[right], left, right))
    ranked.sort()
    unk_id = state["model"].get("unk_id")
    model = {
        "type": "BPE",
        "dropout": None,
        "unk_token": pieces[unk_id][0] if unk_id is not None else None,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": True,
        "byte_fallback": bool(state["model"].get("byte_fallback", True)),
        "ignore_merges": False,
        "vocab": ids,
        "merges": [[left, right] for *_, left, right in ranked],
    }
    return {**state, "model": model}


def _with_bpe_merges(tokenizer: Any) -> bool:
    """Rebuild a Unigram backend as BPE (bpe_from_scores); False when the model is not a Unigram."""
    from tokenizers import Tokenizer

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    if state["model"]["type"] != "Unigram":
        return False
    keep_whole = {str(t) for t in tokenizer.all_special_tokens} | {
        str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
    }
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(bpe_from_scores(state, keep_whole)))
    return True


def convert(gguf: Path, dtype: str, out: Path) -> dict[str, object]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    torch_dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch_dtype)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    declared = {
        "bos_token": model.config.bos_token_id,
        "eos_token": model.config.eos_token_id,
        "pad_token": model.config.pad_token_id,
    }
    for attribute, token_id in declared.items():
        if isinstance(token_id, int) and 0 <= token_id < len(tokenizer):
            setattr(tokenizer, attribute, tokenizer.convert_ids_to_tokens(token_id))
    rebuilt = _with_bpe_merges(tokenizer)
    model.hf_quantizer = None
    model.config.quantization_config = None
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    config_file = out / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config.pop("quantization_config", None)
    config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    report: dict[str, object] = {
        "architecture": (config.get("architectures") or ["?"])[0],
        "param_count": sum(p.numel() for p in model.parameters()),
        "dtype": dtype,
        "vocab_size": len(tokenizer),
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "eos_token": tokenizer.eos_token,
        "bpe_merges_from_scores": rebuilt,
        "load_and_save_s": round(time.perf_counter() - started, 1),
    }
    (out / "conversion.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loraops.basemodel._convert_gguf")
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    report = convert(args.gguf, args.dtype, args.out)
    print(f"[basemodel] {report['architecture']}, {report['param_count']:,} parameters, {args.dtype}")


if __name__ == "__main__":
    main()
