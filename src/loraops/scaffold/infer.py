"""What a new task's data says about its params: the format, the size class and, when every answer is a
JSON object, the JSON Schema the gate's format check uses (pure; `loraops init` writes the result)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from loraops.data.records import Format, vote_format
from loraops.errors import DataError

# A string field with at most this many distinct values, each seen at least twice, is a category (enum).
MAX_ENUM_VALUES = 12


@dataclass(frozen=True)
class TaskShape:
    """The facts `loraops init` reads from the training data."""

    format: Format
    examples: int
    json_schema: dict[str, Any] | None  # None: the answers are not all JSON objects
    longest_answer: str

    @property
    def task_metric(self) -> str:
        return "json_fields" if self.json_schema is not None else "exact_match"

    @property
    def size_class(self) -> str:
        """data.task: the size guidance the quality report applies (style 100-500, domain 1k-10k...)."""
        return "style" if self.examples < 1000 else "domain" if self.examples < 10_000 else "complex"


def infer_task(text: str, where: str) -> TaskShape:
    """Read a JSONL training file's text (``where`` names it in errors) and describe the task."""
    records: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{where}:{number}: not a JSON object ({exc.msg})",
                hint="one JSON object per line (alpaca: instruction/input/output; chat: messages)",
            ) from None
        if not isinstance(value, dict):
            raise DataError(f"{where}:{number}: a JSON {type(value).__name__}, not an object")
        records.append((number, value))
    if not records:
        raise DataError(f"{where}: no examples", hint="one JSON object per line")
    votes = Counter(vote_format(value) for _, value in records)
    fmt: Format = "chat" if votes["chat"] > votes["alpaca"] else "alpaca"
    if votes[fmt] == 0:
        number, value = records[0]
        raise DataError(
            f"{where}:{number}: neither alpaca nor chat (keys: {', '.join(sorted(value)) or 'none'})",
            hint="alpaca records have instruction/input/output, chat records a messages list",
        )
    answers = [_answer(value, fmt) for _, value in records]
    return TaskShape(
        format=fmt,
        examples=len(records),
        json_schema=json_schema_of(answers),
        longest_answer=max(answers, key=len),
    )


def _answer(record: dict[str, Any], fmt: Format) -> str:
    if fmt == "alpaca":
        return str(record.get("output", ""))
    messages = record.get("messages") or []
    last = messages[-1] if isinstance(messages, list) and messages else {}
    return str(last.get("content", "")) if isinstance(last, dict) else ""


def json_schema_of(answers: list[str]) -> dict[str, Any] | None:
    """A JSON Schema every answer satisfies, when each is a JSON object: keys in every answer required,
    no other keys when all answers have the same keys, categories as enums, else the values' types."""
    objects = []
    for answer in answers:
        try:
            value = json.loads(answer)
        except ValueError:
            return None
        if not isinstance(value, dict) or not value:
            return None
        objects.append(value)
    keys = list(dict.fromkeys(k for obj in objects for k in obj))
    required = [k for k in keys if all(k in obj for obj in objects)]
    same_keys = all(set(obj) == set(keys) for obj in objects)
    properties = {k: _property([obj[k] for obj in objects if k in obj]) for k in keys}
    return {
        "type": "object",
        "required": required,
        "additionalProperties": not same_keys,
        "properties": properties,
    }


def _property(values: list[Any]) -> dict[str, Any]:
    if all(isinstance(v, bool) for v in values):
        return {"type": "boolean"}
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return {"type": "integer"}
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return {"type": "number"}
    if all(isinstance(v, str) for v in values):
        counts = Counter(values)
        if len(counts) <= MAX_ENUM_VALUES and min(counts.values()) >= 2 and len(values) > len(counts):
            return {"enum": sorted(counts)}
        return {"type": "string", "minLength": 1} if all(values) else {"type": "string"}
    return {}
