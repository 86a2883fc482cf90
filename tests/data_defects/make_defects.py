"""Writes the defective JSONL files of tests/data_defects/files/ and their expectations (cases.json).

Each file holds good records around exactly one defect, so the test can check that the defect is
reported at its line with its reason. After editing, rerun:
`.venv/bin/python tests/data_defects/make_defects.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FILES = HERE / "files"


def good(i: int) -> str:
    return json.dumps(
        {
            "instruction": f"Classify ticket {i}: the app number {i} is broken",
            "input": "",
            "output": f'{{"category": "technical", "n": {i}}}',
        }
    )


def chat(i: int, *extra: dict[str, Any]) -> str:
    msgs = [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]
    return json.dumps({"messages": msgs})


def lines(bad: str | bytes, at: int = 3, total: int = 6, maker: Any = good) -> bytes:
    out: list[bytes] = []
    for n in range(1, total + 1):
        if n == at:
            out.append(bad if isinstance(bad, bytes) else bad.encode("utf-8"))
        else:
            out.append(maker(n).encode("utf-8"))
    return b"\n".join(out) + b"\n"


def chat_line(messages: Any, **extra: Any) -> str:
    return json.dumps({"messages": messages, **extra})


U = {"role": "user", "content": "hi"}
A = {"role": "assistant", "content": "hello"}
S = {"role": "system", "content": "be brief"}

# name -> (bytes, line, code, params overrides)
CASES: dict[str, tuple[bytes, int, str, dict[str, Any]]] = {
    "invalid_json_trailing_comma": (lines('{"instruction": "a", "output": "b",}'), 3, "invalid_json", {}),
    "invalid_json_truncated": (lines('{"instruction": "a", "output": "b"', at=6), 6, "invalid_json", {}),
    "invalid_json_single_quotes": (lines("{'instruction': 'a', 'output': 'b'}", at=2), 2, "invalid_json", {}),
    "invalid_json_two_records_on_a_line": (lines(good(90) + " " + good(91), at=4), 4, "invalid_json", {}),
    "invalid_json_nan": (lines('{"instruction": "a", "output": "b", "score": NaN}'), 3, "invalid_json", {}),
    "invalid_utf8_latin1": (
        lines('{"instruction": "caf\xe9", "output": "b"}'.encode("latin-1"), at=2),
        2,
        "invalid_utf8",
        {},
    ),
    "invalid_utf8_truncated_sequence": (
        lines(b'{"instruction": "a\xe2\x82", "output": "b"}', at=5),
        5,
        "invalid_utf8",
        {},
    ),
    "utf8_bom": (b"\xef\xbb\xbf" + lines("", at=0), 1, "bom", {}),
    "utf16": (lines("", at=0).decode().encode("utf-16"), 0, "utf16", {}),
    "not_an_object_array": (lines('["a", "b"]', at=2), 2, "not_an_object", {}),
    "not_an_object_string": (lines('"just a sentence"', at=4), 4, "not_an_object", {}),
    "missing_output": (lines('{"instruction": "a", "input": ""}', at=4), 4, "missing_field", {}),
    "missing_instruction": (lines('{"input": "x", "output": "b"}'), 3, "missing_field", {}),
    "empty_output": (lines('{"instruction": "a", "output": "   "}'), 3, "empty_field", {}),
    "empty_instruction": (lines('{"instruction": "", "output": "b"}', at=5), 5, "empty_field", {}),
    "wrong_type_output_number": (lines('{"instruction": "a", "output": 42}'), 3, "wrong_type", {}),
    "wrong_type_instruction_null": (lines('{"instruction": null, "output": "b"}'), 3, "wrong_type", {}),
    "wrong_type_input_list": (
        lines('{"instruction": "a", "input": ["x"], "output": "b"}'),
        3,
        "wrong_type",
        {},
    ),
    "duplicate_key": (lines('{"instruction": "a", "output": "b", "output": "c"}'), 3, "duplicate_key", {}),
    "control_character": (lines('{"instruction": "a", "output": "b\\u0000c"}'), 3, "control_character", {}),
    "lone_surrogate": (lines('{"instruction": "a\\ud800", "output": "b"}'), 3, "invalid_unicode", {}),
    "mixed_format_chat_in_alpaca": (lines(chat_line([U, A])), 3, "mixed_format", {}),
    "chat_unknown_role": (
        lines(chat_line([U, {"role": "bot", "content": "x"}]), maker=chat),
        3,
        "unknown_role",
        {},
    ),
    "chat_ends_with_user": (lines(chat_line([U, A, U]), maker=chat), 3, "last_turn_not_assistant", {}),
    "chat_empty_messages": (lines(chat_line([]), maker=chat), 3, "empty_field", {}),
    "chat_messages_not_a_list": (lines(chat_line("hi"), maker=chat), 3, "wrong_type", {}),
    "chat_missing_content": (
        lines(chat_line([U, {"role": "assistant"}]), maker=chat),
        3,
        "missing_field",
        {},
    ),
    "chat_content_parts": (
        lines(chat_line([{"role": "user", "content": [{"type": "text", "text": "hi"}]}, A]), maker=chat),
        3,
        "wrong_type",
        {},
    ),
    "chat_empty_assistant": (
        lines(chat_line([U, {"role": "assistant", "content": ""}]), maker=chat),
        3,
        "empty_field",
        {},
    ),
    "chat_no_user_turn": (lines(chat_line([S, A]), maker=chat), 3, "no_user_turn", {}),
    "chat_system_not_first": (lines(chat_line([U, S, A]), maker=chat), 3, "misplaced_system", {}),
    "chat_sharegpt": (
        lines(json.dumps({"conversations": [{"from": "human", "value": "hi"}]}), maker=chat),
        3,
        "missing_field",
        {},
    ),
    "chat_message_not_object": (lines(chat_line(["hi", A]), maker=chat), 3, "wrong_type", {}),
    "chat_missing_messages": (lines(json.dumps({"msgs": [U, A]}), maker=chat), 3, "missing_field", {}),
    "too_long_for_sequence_len": (
        lines(json.dumps({"instruction": "Summarise", "output": "word " * 400}), at=5),
        5,
        "too_long",
        {},
    ),
    "line_too_long": (
        lines(json.dumps({"instruction": "a", "output": "x" * 3000}), at=2),
        2,
        "line_too_long",
        {"policy": {"max_line_bytes": 1024}},
    ),
    "empty_file": (b"", 0, "empty_dataset", {}),
    "only_blank_lines": (b"\n\n  \n", 0, "empty_dataset", {}),
    "unknown_format": (
        lines(
            json.dumps({"prompt": "a", "completion": "b"}),
            at=0,
            maker=lambda i: json.dumps({"prompt": f"q{i}", "completion": "a"}),
        ),
        0,
        "unknown_format",
        {},
    ),
    "contradictions_over_threshold": (
        lines(
            json.dumps({"instruction": "Classify ticket 2: the app number 2 is broken", "output": "billing"}),
            at=4,
        ),
        2,
        "contradiction",
        {},
    ),
    "too_few_examples": (lines("", at=0, total=3), 0, "too_few_examples", {"policy": {"min_examples": 10}}),
    "declared_chat_got_alpaca": (lines("", at=0), 1, "mixed_format", {"format": "chat"}),
}


def main() -> None:
    FILES.mkdir(exist_ok=True)
    for old in FILES.glob("*.jsonl"):
        old.unlink()
    expected = {}
    for name, (data, line, code, overrides) in sorted(CASES.items()):
        (FILES / f"{name}.jsonl").write_bytes(data)
        expected[name] = {"line": line, "code": code, "params": overrides}
    (HERE / "cases.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n", "utf-8")
    print(f"{len(expected)} defective files in {FILES}")


if __name__ == "__main__":
    main()
