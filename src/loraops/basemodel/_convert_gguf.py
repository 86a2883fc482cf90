"""Runs in the trainer environment: a GGUF file -> a Hugging Face model directory (safetensors).

transformers (with the ``gguf`` package) dequantizes the weights and reads the tokenizer and its chat
template from the GGUF metadata. A model loaded from GGUF carries a quantizer that ``save_pretrained``
refuses; the weights are plain tensors by then, so it is dropped, and so is the ``quantization_config``
key (Axolotl 0.19 reads a null one as a config and fails). The tokenizer's special tokens are set from
the ids the GGUF declares (the model config's): transformers 5.16 names ``<|im_start|>`` as SmolLM2's end
of sequence, where the GGUF says ``<|im_end|>``; trained that way, an adapter never learns to stop.
``conversion.json`` is written last.

    python -m loraops.basemodel._convert_gguf FILE.gguf --dtype float32 --out DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


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
