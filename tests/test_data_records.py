"""Unit tests of line parsing, format checks, normalisation and the bounded-memory statistics."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from loraops.data.quality import BUCKETS, Histogram, KeyStore, LabelStats
from loraops.data.records import (
    check_alpaca,
    check_chat,
    label_fields,
    normalise,
    output_shape,
    parse_line,
)


def test_parse_line_reports_column_and_bytes() -> None:
    bad = parse_line(b'{"a": 1,, "b": 2}\n', first=False)
    assert (bad.ok, bad.code) == (False, "invalid_json")
    assert "column 9" in bad.message
    utf = parse_line(b'{"a": "caf\xe9"}\n', first=False)
    assert utf.code == "invalid_utf8" and "byte 11" in utf.message and "e9" in utf.message
    assert parse_line(b"  \r\n", first=False).blank
    assert parse_line(b'\xef\xbb\xbf{"a": 1}\n', first=True).value == {"a": 1}
    assert parse_line(b'{"a": 1}\r\n', first=False).value == {"a": 1}


def test_alpaca_canonical_form_and_warnings() -> None:
    ex, problems = check_alpaca({"output": "b", "instruction": "a", "inputs": "x", "input": None})
    assert ex is not None
    assert list(ex.record) == ["instruction", "input", "output", "inputs"]
    assert ex.record["input"] == ""
    assert problems == [("unknown_field", "unknown field 'inputs' (did you mean 'input'?)", "warning")]


def test_alpaca_reports_every_problem_of_a_record() -> None:
    ex, problems = check_alpaca({"instruction": 3, "input": [], "output": ""})
    assert ex is None
    assert [p[0] for p in problems] == ["wrong_type", "wrong_type", "empty_field"]


def test_chat_checks() -> None:
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
    ]
    ex, problems = check_chat({"messages": msgs})
    assert ex is not None and not problems
    assert ex.output_text == "a" and ex.input_text == "system: s\nuser: u"
    ex, problems = check_chat(
        {"messages": [{"role": "User", "content": "u"}, {"role": "assistant", "content": "a"}]}
    )
    assert ex is None and problems[0][0] == "unknown_role" and "did you mean 'user'" in problems[0][1]
    _, problems = check_chat({"messages": [msgs[1], msgs[1], msgs[2]]})
    assert ("roles_not_alternating", "user and assistant turns do not alternate", "warning") in problems


def test_normalise_collapses_case_punctuation_space_and_width() -> None:
    assert normalise("  Hello,   WORLD!! ") == normalise("hello world") == "hello world"
    assert normalise("ＡＢＣ") == "abc"
    assert normalise("a_b") == "a b"


def test_output_shape_and_labels() -> None:
    assert output_shape('{"category": "billing", "priority": "high"}') == "json{category,priority}"
    assert output_shape("Order 12345 shipped on 2024-01-02") == "w 9 w… 9-9-9"
    ex, _ = check_alpaca({"instruction": "a", "output": '{"category": "billing"}', "source": "mail"})
    assert ex is not None
    assert label_fields(ex, "alpaca") == {
        "output.category": "billing",
        "output": '{"category": "billing"}',
        "source": "mail",
    }


def _rows(n: int, seed: int) -> list[tuple[int, int, int, int]]:
    rng = random.Random(seed)
    rows = []
    for line in range(1, n + 1):
        inp = rng.randrange(n // 3 + 1)
        out = rng.randrange(3)
        exact = rng.randrange(2)
        rows.append((inp * 1000003, inp * 7919 + out, inp * 31 + out * 7 + exact, line))
    return rows


def test_keystore_spilled_equals_in_memory(tmp_path: Path) -> None:
    rows = _rows(5000, 1)
    mem, spilled = KeyStore(tmp_path / "a"), KeyStore(tmp_path / "b", budget_rows=700)
    for r in rows:
        mem.add(*r)
        spilled.add(*r)
    a, b = mem.analyse(), spilled.analyse()
    assert any((tmp_path / "b").iterdir()) is False  # bucket files are consumed
    assert a.exact_duplicates == b.exact_duplicates > 0
    assert a.near_duplicates == b.near_duplicates > 0
    assert a.contradicting_examples == b.contradicting_examples > 0
    assert a.exact_pairs == b.exact_pairs
    assert np.array_equal(a.drop_lines, b.drop_lines)
    # Brute force: a later line with the same (input, near, exact) as an earlier one is an exact dup.
    seen: set[tuple[int, int, int]] = set()
    dups = []
    for inp, near, exact, line in rows:
        if (inp, near, exact) in seen:
            dups.append(line)
        seen.add((inp, near, exact))
    assert list(a.drop_lines) == dups
    assert BUCKETS > 1


def test_keystore_pairs_point_to_first_occurrence(tmp_path: Path) -> None:
    ks = KeyStore(tmp_path)
    ks.add(1, 10, 100, 5)
    ks.add(1, 10, 100, 2)
    ks.add(1, 10, 101, 9)  # near duplicate (same normalised text, different bytes)
    ks.add(1, 11, 102, 7)  # same input, different output: contradiction
    ks.add(2, 20, 200, 1)
    found = ks.analyse()
    assert found.exact_pairs == [(5, 2)]
    assert found.near_pairs == [(9, 2)]
    assert found.contradictions == [[2, 5, 7, 9]]
    assert found.contradicting_examples == 4 and found.contradiction_groups == 1


def test_histogram_quantiles_are_exact() -> None:
    h = Histogram(cap=1000)
    values = list(range(1, 101))
    h.add_many(values)
    assert h.quantile(0.5) == int(np.quantile(values, 0.5, method="lower"))
    assert h.summary()["max"] == 100 and h.summary()["min"] == 1
    h.add_many([5000])
    assert h.max == 5000 and h.count_above(1000) == 0 and h.count_above(99) == 2


def test_label_stats_drop_free_text_fields() -> None:
    stats = LabelStats(max_values=5)
    for i in range(100):
        stats.add({"category": ["a", "b", "c"][i % 3], "id": str(i)})
    assert set(stats.categorical(100)) == {"category"}
    assert (
        json.dumps(dict(stats.categorical(100)["category"]), sort_keys=True) == '{"a": 34, "b": 33, "c": 33}'
    )
