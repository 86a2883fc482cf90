"""A throwaway tiny Llama + two LoRA adapters, for tests that need a real model on a real server.

``build_tiny_model(out_dir)`` runs this file as a script in the trainer environment (torch,
transformers, peft live there, not in the control plane) and returns the model directory and the two
adapter directories. The result is cached in ``out_dir``: a second call returns at once.

The model is random-init (hidden 128, 2 heads -> head_dim 64, which vLLM's CPU attention accepts),
with a byte-level BPE tokenizer of ~300 tokens and loraops' chat template. The adapters (r=8 on
q_proj/v_proj) get different random non-zero B matrices, so greedy outputs through them differ.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ADAPTER_RANK = 8
ADAPTER_TARGETS = ("q_proj", "v_proj")
_DONE = "tiny-model.json"


def build_tiny_model(out_dir: Path) -> tuple[Path, list[Path]]:
    """Build (or reuse) the tiny model under ``out_dir``; returns (model_dir, [adapter_a, adapter_b])."""
    from loraops.envs import require, run_streaming, trainer_env

    out_dir = Path(out_dir)
    done = out_dir / _DONE
    if not done.exists():
        trainer = require(trainer_env())
        run_streaming(
            [trainer.python, Path(__file__).resolve(), out_dir],
            env=trainer.environ({"OMP_NUM_THREADS": "1"}),
            what="building the tiny test model",
        )
    manifest = json.loads(done.read_text())
    return Path(manifest["model"]), [Path(p) for p in manifest["adapters"]]


def _build(out_dir: Path) -> None:  # runs in the trainer environment
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from loraops.prompts import CHAT_TEMPLATE, alpaca_prompt

    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = out_dir / "model"

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [alpaca_prompt(f"Say the word number {i} twice.") + f"word{i} word{i}" for i in range(50)]
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        chat_template=CHAT_TEMPLATE,
    )
    fast.save_pretrained(model_dir)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(model_dir, safe_serialization=True)

    adapters: list[str] = []
    for name, seed in (("adapter_a", 1), ("adapter_b", 2)):
        base = LlamaForCausalLM.from_pretrained(model_dir)
        lora = get_peft_model(
            base,
            LoraConfig(r=ADAPTER_RANK, lora_alpha=16, target_modules=list(ADAPTER_TARGETS), lora_dropout=0.0),
        )
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for pname, param in lora.named_parameters():
                if "lora_A" in pname or "lora_B" in pname:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
        lora.save_pretrained(out_dir / name)
        adapters.append(str(out_dir / name))

    (out_dir / _DONE).write_text(json.dumps({"model": str(model_dir), "adapters": adapters}))


if __name__ == "__main__":
    _build(Path(sys.argv[1]).resolve())
