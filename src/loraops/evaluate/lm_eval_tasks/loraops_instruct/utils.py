"""Checks of the loraops_instruct suite, run by lm-eval (standalone: no loraops import in lm-eval's process).

Each example names its check and its target; an answer passes when the check holds (1.0) or not (0.0):
- ``contains``: the target appears in the answer, case-insensitively (vocabulary: "cold");
- ``last_number``: the last integer in the answer is the target ("3 + 4 = 7");
- ``word``: the target appears as a whole word (a plural; an IFEval-style keyword constraint).
"""

from __future__ import annotations

import re
from typing import Any

_NUMBER = re.compile(r"-?\d+")


def check(kind: str, target: str, answer: str) -> bool:
    """Whether ``answer`` satisfies the check ``kind`` with ``target``."""
    if kind == "contains":
        return target.lower() in answer.lower()
    if kind == "last_number":
        numbers = _NUMBER.findall(answer.replace(",", ""))
        return bool(numbers) and numbers[-1] == target
    if kind == "word":
        return re.search(rf"\b{re.escape(target)}\b", answer, flags=re.IGNORECASE) is not None
    raise ValueError(f"unknown check {kind!r}")


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return {"acc": float(check(doc["check"], doc["target"], results[0]))}
