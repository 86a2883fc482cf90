"""The base model's tokenizer: byte-level BPE trained on the corpus (needs only the `tokenizers` package).

Byte-level, so any text encodes (JSON braces and quotes, accents, emoji) without an unknown token.
Digits are split one by one, so numbers are spelled digit by digit and counting generalizes. The
corpus is fed *with* the alpaca preamble, so the preamble costs a couple of dozen tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from loraops.prompts import alpaca_prompt

BOS = "<s>"
EOS = "</s>"
PAD = "<pad>"
SPECIAL_TOKENS = (BOS, EOS, PAD)  # ids 0, 1, 2


def alpaca_text(record: Mapping[str, str]) -> str:
    """The full training text of a record: the alpaca prompt followed by the response."""
    return alpaca_prompt(record["instruction"], record.get("input", "")) + record["output"]


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train the BPE. Adds BOS at the start of every encoding (as Llama tokenizers do), never EOS."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A $B",
        special_tokens=[(BOS, tok.token_to_id(BOS))],
    )
    return tok


def corpus_tokenizer(
    records: Iterable[Mapping[str, str]], extra_texts: Iterable[str], vocab_size: int
) -> Tokenizer:
    return train_tokenizer([*(alpaca_text(r) for r in records), *extra_texts], vocab_size)


def alpaca_token_count(tok: Tokenizer, record: Mapping[str, str]) -> int:
    """Tokens Axolotl's alpaca strategy makes of ``record``: BOS + prompt, then response + EOS."""
    prompt = alpaca_prompt(record["instruction"], record.get("input", ""))
    prompt_ids = tok.encode(prompt).ids
    response_ids = tok.encode(record["output"], add_special_tokens=False).ids
    return len(prompt_ids) + len(response_ids) + 1
