"""What may be served under a stable name, and the canary a version must answer first. Pure functions.

A version reaches a stable name only when the gate passed it (version tag ``gate=passed``) or when a
person put ``loraops.serve_override`` on it with a reason (settable in the MLflow UI, kept on the
record). Before the stable name moves, the version answers its canary: a test-split request chosen at
evaluation time among those it answered in the expected format (tag ``loraops.canary``); the answer
must have that format again. A version without a canary must answer a greeting with some text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from loraops.evaluate.metrics import FormatCheck

GATE_TAG = "gate"
OVERRIDE_TAG = "loraops.serve_override"
REFUSED_TAG = "loraops.serving.refused"
CANARY_TAG = "loraops.canary"
CANARY_MAX_TOKENS = 256  # the most a canary may ask for (it runs before every switch)
_TAG_LIMIT = 5000  # MLflow's limit on a tag value


@dataclass(frozen=True)
class Permission:
    allowed: bool
    reason: str


def serve_permission(tags: dict[str, str]) -> Permission:
    """May a version with these tags go under a stable name? Says why in either case."""
    override = tags.get(OVERRIDE_TAG, "").strip()
    gate = tags.get(GATE_TAG)
    if gate == "passed":
        return Permission(True, "the gate passed it")
    if override:
        return Permission(True, f"override by a person: {override}")
    if gate is None:
        why = "the gate never judged it"
    elif gate == "awaiting-review":
        why = "the gate is waiting for the expert review"
    else:
        why = f"the gate refused it (gate={gate})"
    return Permission(
        False,
        f"{why}; to serve it anyway, set the tag {OVERRIDE_TAG} on the version to the reason (MLflow UI)",
    )


@dataclass(frozen=True)
class Canary:
    """One request and the format its answer must have."""

    request: str | list[dict[str, str]]
    json_schema: dict[str, Any] | None = None
    regex: str | None = None
    max_tokens: int = 8  # what the version needed for this answer at evaluation, plus a margin

    def problem(self, answer: str) -> str | None:
        """None when ``answer`` is acceptable, else what is wrong with it (one line)."""
        if not answer.strip():
            return "the canary's answer is empty"
        if self.json_schema is None and self.regex is None:
            return None
        if not FormatCheck(self.json_schema, self.regex).ok(answer):
            expected = "the JSON schema" if self.json_schema is not None else f"the regex {self.regex!r}"
            return f"the canary's answer does not match {expected}: {answer.strip()[:120]!r}"
        return None

    def to_tag(self) -> str:
        doc: dict[str, Any] = {"request": self.request, "max_tokens": self.max_tokens}
        if self.json_schema is not None:
            doc["json_schema"] = self.json_schema
        if self.regex is not None:
            doc["regex"] = self.regex
        text = json.dumps(doc, ensure_ascii=False)
        if len(text) > _TAG_LIMIT and self.json_schema is not None:  # keep the check, drop the detail
            doc["json_schema"] = {"type": "object"}
            text = json.dumps(doc, ensure_ascii=False)
        return text[:_TAG_LIMIT]


GREETING = Canary("Hello.")


def canary_of(tags: dict[str, str]) -> Canary:
    """The version's canary from its tag; the greeting when it has none (or an unreadable one)."""
    raw = tags.get(CANARY_TAG)
    if not raw:
        return GREETING
    try:
        doc = json.loads(raw)
        request = doc["request"]
    except (ValueError, KeyError, TypeError):
        return GREETING
    if not isinstance(request, str | list):
        return GREETING
    try:
        max_tokens = min(CANARY_MAX_TOKENS, max(1, int(doc.get("max_tokens", 64))))
    except (TypeError, ValueError):
        max_tokens = 64
    return Canary(request, doc.get("json_schema"), doc.get("regex"), max_tokens)


def pick_canary(
    requests: list[str | list[dict[str, str]]],
    format_ok: list[bool],
    fmt: FormatCheck | None,
    answer_tokens: list[int] | None = None,
) -> Canary:
    """The first test request the candidate answered in the expected format (the first one otherwise),
    asking for as many tokens as that answer took plus a margin (the canary runs before every switch,
    so it is kept short)."""
    index = next((i for i, ok in enumerate(format_ok) if ok), 0)
    used = answer_tokens[index] if answer_tokens and index < len(answer_tokens) else 56
    return Canary(
        requests[index] if requests else "Hello.",
        fmt.json_schema if fmt else None,
        fmt.regex if fmt else None,
        min(CANARY_MAX_TOKENS, max(8, used + 8)),
    )
