"""Property-based tests of the splitter: deterministic, no leakage across splits, stable on append."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loraops.data.params import DataParams, ReviewParams, SplitParams
from loraops.data.prepare import prepare
from loraops.data.records import normalise
from loraops.data.split import Splitter, assign_split, review_fraction
from loraops.workspace import Workspace

texts = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
fractions = st.tuples(st.floats(0.0, 0.45), st.floats(0.0, 0.45))


def variants(text: str) -> list[str]:
    """Near-duplicates: the same normalised text."""
    return [text, text.upper(), f"  {text}!!", text.replace(" ", "  ")]


@given(st.lists(texts, max_size=60), fractions, st.text(max_size=8))
def test_split_is_deterministic(items: list[str], fr: tuple[float, float], salt: str) -> None:
    params = SplitParams(val_fraction=fr[0], test_fraction=fr[1], salt=salt)
    first = [Splitter(params)(normalise(t)) for t in items]
    again = [assign_split(normalise(t), params.model_copy()) for t in items]
    assert first == again


@given(st.lists(texts, min_size=1, max_size=40), fractions)
def test_near_duplicates_never_cross_splits(items: list[str], fr: tuple[float, float]) -> None:
    split = Splitter(SplitParams(val_fraction=fr[0], test_fraction=fr[1]))
    where: dict[str, set[str]] = defaultdict(set)
    for text in items:
        for v in variants(text):
            where[normalise(v)].add(split(normalise(v)))
    assert all(len(s) == 1 for s in where.values())


def test_split_fractions_are_respected() -> None:
    split = Splitter(SplitParams(val_fraction=0.1, test_fraction=0.2))
    counts: dict[str, int] = defaultdict(int)
    for i in range(20000):
        counts[split(f"ticket {i}")] += 1
    assert abs(counts["test"] / 20000 - 0.2) < 0.015
    assert abs(counts["val"] / 20000 - 0.1) < 0.015


def test_salt_reshuffles() -> None:
    a = [Splitter(SplitParams(salt="a"))(f"t{i}") for i in range(500)]
    b = [Splitter(SplitParams(salt="b"))(f"t{i}") for i in range(500)]
    assert a != b


def test_review_fraction() -> None:
    assert review_fraction(999, ReviewParams()) == 1.0
    assert review_fraction(5000, ReviewParams(fraction=0.15)) == 0.15
    assert review_fraction(5000, ReviewParams(fraction=0.2, max_examples=100)) == 100 / 5000


def _records(inputs: list[str]) -> list[dict[str, str]]:
    return [{"instruction": t, "input": "", "output": f"answer to {t}"} for t in inputs]


def _split_of_each(prepared: Path) -> dict[str, str]:
    out = {}
    for split in ("train", "val", "test"):
        for line in (prepared / f"{split}.jsonl").read_text("utf-8").splitlines():
            out[json.loads(line)["instruction"]] = split
    return out


def _write(path: Path, records: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), "utf-8")


unique_inputs = st.lists(
    st.text("abcdefghij ", min_size=3, max_size=12), min_size=1, max_size=30, unique_by=normalise
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(unique_inputs, unique_inputs)
def test_prepare_is_stable_when_data_is_appended(old: list[str], new: list[str]) -> None:
    old = [t for t in old if normalise(t)]
    new = [t for t in new if normalise(t) and normalise(t) not in {normalise(o) for o in old}]
    if not old:
        return
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp))
        params = DataParams(split=SplitParams(val_fraction=0.3, test_fraction=0.3))
        raw = ws.root / params.raw
        _write(raw, _records(old))
        prepare(ws, params, tokenizer_dir=None, sequence_len=256)
        before = _split_of_each(ws.root / params.prepared_dir)
        _write(raw, _records(old + new))
        res = prepare(ws, params, tokenizer_dir=None, sequence_len=256)
        after = _split_of_each(ws.root / params.prepared_dir)
        assert {k: after[k] for k in before} == before  # no old example moved to another split
        assert set(after) == set(before) | set(new) and res.examples == len(old) + len(new)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(unique_inputs, st.data())
def test_prepare_keeps_duplicates_in_one_split(inputs: list[str], data: st.DataObject) -> None:
    inputs = [t for t in inputs if normalise(t)]
    if not inputs:
        return
    dups = data.draw(st.lists(st.sampled_from(inputs), max_size=10))
    records = _records(inputs) + [
        {"instruction": t.upper() + "!", "input": "", "output": f"other answer {i}"}
        for i, t in enumerate(dups)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp))
        params = DataParams(
            split=SplitParams(val_fraction=0.3, test_fraction=0.3),
            policy={"contradictions": {"error_above": 1.0}, "near_duplicates": {"error_above": 1.0}},
        )
        _write(ws.root / params.raw, records)
        prepare(ws, params, tokenizer_dir=None, sequence_len=256)
        where: dict[str, set[str]] = defaultdict(set)
        for split in ("train", "val", "test"):
            for line in (ws.root / params.prepared_dir / f"{split}.jsonl").read_text("utf-8").splitlines():
                where[normalise(json.loads(line)["instruction"])].add(split)
        assert all(len(s) == 1 for s in where.values())
        assert sum(len(s) for s in where.values()) == len(inputs)
