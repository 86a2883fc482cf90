"""The real model's general suite (loraops_instruct): its checks, its selection, its shipped files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SMOLLM2_PARAMS
from loraops.config import load_params
from loraops.evaluate.harness import SHIPPED_TASKS
from loraops.evaluate.instruct_suite import (
    GROUP,
    SHIPPED,
    SKILLS,
    Item,
    candidate_items,
    passes,
    select_answered,
    write_tasks,
)
from loraops.evaluate.procedure import general_tasks


@pytest.mark.parametrize(
    ("item", "answer", "expected"),
    [
        (Item("opposites", "q", "contains", "cold"), "The opposite of hot is Cold.", True),
        (Item("opposites", "q", "contains", "cold"), '{"category": "account"}', False),
        (Item("plurals", "q", "word", "mice"), 'The plural of "mouse" is "mice".', True),
        (Item("plurals", "q", "word", "mice"), "Mouses, or mices.", False),
        (Item("arithmetic", "q", "last_number", "15"), "To add 7 and 8: 7 + 8 = 15.", True),
        (Item("arithmetic", "q", "last_number", "6"), "12 + 5 = 6 is wrong, it is 17", False),
        (Item("arithmetic", "q", "last_number", "7"), "seven", False),
        (Item("keywords", "q", "word", "warm"), "A Warm cup of tea.", True),
        (Item("keywords", "q", "word", "warm"), "The tea warmed me.", False),  # a whole word only
    ],
)
def test_each_check_passes_what_it_should_and_nothing_else(item: Item, answer: str, expected: bool) -> None:
    assert passes(item, answer) is expected


def test_candidates_are_seeded_and_cover_every_skill() -> None:
    pools = candidate_items()
    assert tuple(pools) == SKILLS and candidate_items() == pools
    assert candidate_items(seed=1)["plurals"] != pools["plurals"]
    assert all(i.check == "word" for i in pools["keywords"]) and len(pools["keywords"]) == 360


def test_only_what_the_model_answers_right_greedily_and_in_every_sample_is_kept() -> None:
    pools = {"sums": [Item("sums", f"What is {n} + 1?", "last_number", str(n + 1)) for n in range(8)]}
    asked_for_samples: list[str] = []

    def greedy(items: list[Item]) -> list[str]:  # right on even targets
        return [f"= {int(i.target) if int(i.target) % 2 == 0 else 0}" for i in items]

    def sampled(items: list[Item]) -> list[list[str]]:  # of 4 samples, one wrong below 5, two from 5 on
        asked_for_samples.extend(i.target for i in items)
        wrong = {i.target: 1 if int(i.target) < 5 else 2 for i in items}
        return [[f"= {i.target}"] * (4 - wrong[i.target]) + ["= 0"] * wrong[i.target] for i in items]

    assert [i.target for i in select_answered(greedy, sampled, per_skill=2, pools=pools)["sums"]] == [
        "2",
        "4",
    ]
    assert asked_for_samples == ["2", "4", "6", "8"]  # only what was right greedily
    assert [i.target for i in select_answered(greedy, sampled, 1, pools=pools, chunk=3)["sums"]] == ["2"]
    with pytest.raises(ValueError, match="answered 2 of 8 candidates firmly, fewer than 3"):
        select_answered(greedy, sampled, per_skill=3, pools=pools)
    with pytest.raises(ValueError, match="answered 0 of 8 candidates firmly"):
        select_answered(greedy, sampled, per_skill=1, pools=pools, allowed_misses=0)


def test_the_shipped_suite_is_what_write_tasks_makes_of_its_data(tmp_path: Path) -> None:
    selected = {
        skill: [Item(skill, **json.loads(line)) for line in (SHIPPED / "data" / f"{skill}.jsonl").open()]
        for skill in SKILLS
    }
    assert {skill: len(items) for skill, items in selected.items()} == dict.fromkeys(SKILLS, 60)
    write_tasks(selected, tmp_path)

    def files(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): p.read_text()
            for p in root.rglob("*")
            if p.suffix in {".yaml", ".jsonl"}
        }

    assert files(tmp_path) == files(SHIPPED)
    assert (tmp_path / "utils.py").read_text() == (SHIPPED / "utils.py").read_text()
    task = (SHIPPED / "plurals.yaml").read_text()
    assert "process_results: !function utils.process_results" in task and "max_gen_toks: 48" in task


def test_smollm2_measures_forgetting_on_the_shipped_suite_through_the_chat_endpoint(tmp_path: Path) -> None:
    params = load_params(SMOLLM2_PARAMS)
    tasks, include = general_tasks(params, base_is_built=False, work_dir=tmp_path)
    assert tasks == [GROUP] and include == SHIPPED_TASKS / GROUP == SHIPPED
    assert params.evaluate.forgetting.api == "chat"
