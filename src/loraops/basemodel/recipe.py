"""The recipe of the offline base model: everything that determines the built model, and its hash."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Bump when skills.py, the tokenizer recipe, the rendered Axolotl config or the init change in a way
# that changes the built model for the same recipe: the fingerprint (and so the cache key) moves.
CORPUS_VERSION = "4"

# Attention head sizes that vLLM's CPU backend supports (a model with another size starts, then the
# engine dies at the first request).
VLLM_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)

# <s>, </s>, <pad>
NUM_SPECIAL_TOKENS = 3
BYTE_ALPHABET = 256


class BaseModelRecipe(BaseModel):
    """A small Llama-architecture model pre-trained with Axolotl on the generated skills corpus."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        "loraops-tiny",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Model name; the built directory is NAME-FINGERPRINT12.",
    )
    seed: int = Field(description="Seeds the corpus, the tokenizer order, the weight init and Axolotl.")

    # tokenizer
    vocab_size: int = Field(
        2048, ge=512, le=32768, description="Byte-level BPE vocabulary size, special tokens included."
    )

    # architecture
    hidden_size: int = Field(128, ge=32, description="Model width.")
    num_layers: int = Field(4, ge=1, description="Number of decoder layers.")
    num_heads: int = Field(2, ge=1, description="Attention heads; hidden_size / num_heads is the head size.")
    intermediate_size: int = Field(384, ge=32, description="Width of the SwiGLU MLP.")
    max_position_embeddings: int = Field(512, ge=64, description="Longest context the model is built for.")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base frequency.")
    init_std: float = Field(0.02, gt=0, description="Standard deviation of the random weight init.")

    # corpus
    skills: tuple[str, ...] = Field(
        ("count_up", "count_down", "add_one_each", "digit_letters", "digit_words"),
        min_length=1,
        description="General skills (names from loraops.basemodel.skills.SKILLS) taught to the model.",
    )
    examples_per_skill: int = Field(1200, ge=1, description="Training examples generated per skill.")
    writing_examples: int = Field(
        5000,
        ge=0,
        description="Unscored everyday-English and JSON examples (basemodel/writing.py), so that the "
        "words and characters a fine-tune brings are not untrained tokens.",
    )
    eval_examples_per_skill: int = Field(
        40, ge=1, description="Held-out examples per skill scored in build_report.json."
    )

    # training (Axolotl full fine-tune of the random init)
    sequence_len: int = Field(128, ge=32, description="Axolotl sequence_len; longer examples are refused.")
    micro_batch_size: int = Field(16, ge=1, description="Examples per forward pass.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    num_epochs: float = Field(3.0, gt=0, description="Passes over the corpus.")
    # Measured on the default model: 5e-4 and 1e-3 learn all five skills in ~800 steps; 2e-3 and above
    # stall at 0% exact match for 1,000+ steps.
    learning_rate: float = Field(5e-4, gt=0, description="Peak learning rate (cosine schedule).")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")

    @model_validator(mode="after")
    def _check(self) -> BaseModelRecipe:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        head = self.hidden_size // self.num_heads
        if head not in VLLM_HEAD_SIZES:
            raise ValueError(
                f"head size hidden_size/num_heads = {head} is not one vLLM supports on CPU "
                f"({', '.join(map(str, VLLM_HEAD_SIZES))})"
            )
        if self.vocab_size < BYTE_ALPHABET + NUM_SPECIAL_TOKENS + 1:
            raise ValueError("vocab_size must exceed the 256-byte alphabet plus special tokens")
        if self.sequence_len > self.max_position_embeddings:
            raise ValueError("sequence_len cannot exceed max_position_embeddings")
        from loraops.basemodel.skills import SKILLS  # local: skills imports this module for typing

        unknown = [s for s in self.skills if s not in SKILLS]
        if unknown:
            raise ValueError(f"unknown skills {unknown}; known: {', '.join(SKILLS)}")
        if len(set(self.skills)) != len(self.skills):
            raise ValueError("skills must not repeat")
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def fingerprint(self) -> str:
        """SHA-256 hex of the canonical recipe and CORPUS_VERSION: the cache key of the built model."""
        payload = f"corpus-version={CORPUS_VERSION}\n{self.canonical_json()}"
        return hashlib.sha256(payload.encode()).hexdigest()

    def dir_name(self) -> str:
        return f"{self.name}-{self.fingerprint()[:12]}"


DEFAULT_RECIPE = BaseModelRecipe(seed=1234)
