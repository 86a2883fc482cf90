"""A real model's replay: its own finished answers to everyday instructions, asked once (self_replay)."""

from __future__ import annotations

import json
from pathlib import Path

from loraops.evaluate.instruct_suite import candidate_items
from loraops.evaluate.runner import Completion
from loraops.train.self_replay import MAX_TOKENS, base_answers_replay, finished_conversations, general_prompts


def test_the_instructions_are_seeded_distinct_and_not_the_general_suites_questions() -> None:
    prompts = general_prompts(150)
    assert len(prompts) == len(set(prompts)) == 150 and general_prompts(150) == prompts
    assert general_prompts(150, seed=1) != prompts
    suite = {i.prompt for items in candidate_items().values() for i in items}
    assert not suite & set(general_prompts(10_000))
    assert not any(
        p.startswith(("What is the capital", "What is the opposite", "Write one sentence")) for p in prompts
    )


def test_only_finished_answers_become_conversations() -> None:
    answers = [Completion("Sure. ", 5, 3), Completion("cut mid", 5, MAX_TOKENS), Completion("  ", 5, 1)]
    records = finished_conversations(["a?", "b?", "c?"], answers, MAX_TOKENS)
    assert records == [
        {"messages": [{"role": "user", "content": "a?"}, {"role": "assistant", "content": "Sure."}]}
    ]


def test_the_base_model_is_asked_once_per_model_and_prompt_set(tmp_path: Path) -> None:
    asked: list[int] = []

    def ask(chats: list[list[dict[str, str]]], max_tokens: int) -> list[Completion]:
        asked.append(len(chats))
        return [Completion(f"answer to {c[0]['content']}", 10, 7) for c in chats]

    first = base_answers_replay(ask, count=20, base_model="/m/a", cache_dir=tmp_path)
    again = base_answers_replay(ask, count=20, base_model="/m/a", cache_dir=tmp_path)
    assert first == again and len(first) == 20 and asked == [40]  # twice the count asked, once
    base_answers_replay(ask, count=20, base_model="/m/b", cache_dir=tmp_path)  # another base model
    assert asked == [40, 40]
    files = sorted(tmp_path.glob("self-replay-*.jsonl"))
    assert len(files) == 2  # one per base model
    assert json.loads(files[0].read_text().splitlines()[0])["messages"][1]["content"].startswith("answer to ")
