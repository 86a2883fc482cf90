"""Replay for a real base model offline: its own answers to general instructions (self-distillation).

Mixing general examples into training is the usual guard against catastrophic forgetting, but a real
model's pre-training data is not at hand offline. Its own greedy answers are: trained on them, the
adapter is pulled towards what the base model already does outside the task. The instructions are
everyday requests (explain, describe, advise, greet, name), in forms the general suite
(``loraops_instruct``: opposites, plurals, keyword sentences) does not ask, so the suite still measures
behaviour the replay did not show. Only answers the model finished within the token budget are kept
(a cut answer would teach it to stop mid-sentence).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loraops.evaluate.runner import Completion
from loraops.files import write_text_atomic

MAX_TOKENS = 96
NOUNS = [
    "volcano", "library", "bicycle", "telescope", "bakery", "glacier", "museum", "compass", "lighthouse",
    "harbor", "orchard", "satellite", "violin", "desert", "rainbow", "castle", "umbrella", "candle",
    "microscope", "island", "kitchen", "bridge", "forest", "newspaper", "calendar", "airport", "piano",
]  # fmt: skip
ACTIVITIES = [
    "studying", "running", "cooking pasta", "saving money", "sleeping well", "learning a language",
    "gardening", "painting", "writing an email", "making friends", "reading more", "staying focused",
    "travelling light", "drinking more water", "keeping a journal", "public speaking",
]  # fmt: skip
OCCASIONS = ["birthday", "new job", "graduation", "wedding", "holiday", "retirement", "new home", "recovery"]
TEMPLATES: list[Callable[[random.Random], str]] = [
    lambda r: f"Explain what a {r.choice(NOUNS)} is in one sentence.",
    lambda r: f"Give me one tip for {r.choice(ACTIVITIES)}.",
    lambda r: f"Write a short message for a friend's {r.choice(OCCASIONS)}.",
    lambda r: f"Why do people enjoy {r.choice(ACTIVITIES)}?",
    lambda r: f"Describe a {r.choice(NOUNS)} to a child in two sentences.",
    lambda r: f"Name two things you might find in a {r.choice(NOUNS)}.",
    lambda r: f"What is a good way to start {r.choice(ACTIVITIES)}?",
    lambda r: f"What should I bring to a {r.choice(OCCASIONS)} party?",
    lambda r: f"Suggest a name for a shop that sells things for {r.choice(ACTIVITIES)}.",
    lambda r: f"How would you explain {r.choice(ACTIVITIES)} to someone who has never tried it?",
]


def general_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct everyday instructions (fewer if the templates run out), in a seeded order."""
    rng = random.Random(seed)
    every = sorted({t(random.Random(i)) for t in TEMPLATES for i in range(200)})
    rng.shuffle(every)
    return every[:n]


def finished_conversations(
    prompts: Sequence[str], answers: Sequence[Completion], max_tokens: int
) -> list[dict[str, Any]]:
    """Conversations of the prompts and the answers the model finished (fewer tokens than the budget)."""
    return [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a.text.strip()}]}
        for p, a in zip(prompts, answers, strict=True)
        if a.text.strip() and a.completion_tokens < max_tokens
    ]


def base_answers_replay(
    ask: Callable[[list[list[dict[str, str]]], int], list[Completion]],
    *,
    count: int,
    base_model: str,
    cache_dir: Path,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """About ``count`` conversations of the base model answering general instructions, asked once per
    base model and prompt set (cached in ``cache_dir``); ``ask(conversations, max_tokens)`` asks the
    served base model greedily."""
    prompts = general_prompts(count * 2, seed)  # room for answers dropped as unfinished
    key = hashlib.sha256(json.dumps([base_model, prompts, MAX_TOKENS]).encode()).hexdigest()[:16]
    cached = cache_dir / f"self-replay-{key}.jsonl"
    if cached.is_file():
        records = [json.loads(line) for line in cached.read_text("utf-8").splitlines() if line.strip()]
    else:
        answers = ask([[{"role": "user", "content": p}] for p in prompts], MAX_TOKENS)
        records = finished_conversations(prompts, answers, MAX_TOKENS)
        write_text_atomic(cached, "".join(json.dumps(r) + "\n" for r in records))
    return records[:count]
