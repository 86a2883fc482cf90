"""Expert review: a sample of test examples exported as CSV (base, RAG and candidate side by side),
verdicts read back and counted. The brief's "expert review of 10-20%": by default 15% of the test
examples, at least 10, drawn with a fixed seed so that the same version always gives the same sample.
"""

from __future__ import annotations

import csv
import io
import math
import random
from dataclasses import dataclass
from pathlib import Path

from loraops.errors import DataError
from loraops.evaluate.suite import EvalReport
from loraops.gate.decision import Review

APPROVE = {"approve", "approved", "yes", "y", "ok", "1", "true", "pass", "good"}
REJECT = {"reject", "rejected", "no", "n", "0", "false", "fail", "bad"}
COLUMNS = ("example", "question", "reference", "base", "rag", "candidate", "verdict", "comment")
DEFAULT_SHARE = 0.15
MIN_SAMPLE = 10


def sample_indices(n_examples: int, size: int | None = None, seed: int = 0) -> list[int]:
    """Which test examples experts review: ``size``, or 15% of them (at least 10), sorted."""
    wanted = size if size is not None else max(MIN_SAMPLE, math.ceil(DEFAULT_SHARE * n_examples))
    return sorted(random.Random(seed).sample(range(n_examples), min(wanted, n_examples)))


def export_csv(report: EvalReport, size: int | None = None, seed: int = 0) -> str:
    """The review sheet: one row per sampled example, verdict and comment to be filled in."""
    runs = report.task.runs
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    for i in sample_indices(len(report.task.questions), size, seed):
        writer.writerow(
            [
                i,
                report.task.questions[i],
                report.task.references[i],
                runs["base"].answers[i] if "base" in runs else "",
                runs["rag"].answers[i] if "rag" in runs else "",
                runs["candidate"].answers[i],
                "",
                "",
            ]
        )
    return out.getvalue()


@dataclass(frozen=True)
class ReviewSheet:
    review: Review
    comments: list[str]


def read_verdicts(path: Path) -> ReviewSheet:
    """Count approved and reviewed rows; a row without a known verdict is an error naming its line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the review sheet ({exc.strerror})") from None
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "verdict" not in reader.fieldnames:
        raise DataError(f"{path}:1: no 'verdict' column", hint="use the sheet `loraops review export` wrote")
    approved = reviewed = 0
    comments = []
    problems = []
    for row in reader:
        line = reader.line_num
        verdict = (row.get("verdict") or "").strip().lower()
        if verdict in APPROVE:
            approved += 1
        elif verdict not in REJECT:
            problems.append(f"{path}:{line}: verdict {verdict!r} is neither approve nor reject")
            continue
        reviewed += 1
        if (row.get("comment") or "").strip():
            comments.append(f"example {row.get('example')}: {row['comment'].strip()}")
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(problems[0] + more, hint="write approve or reject in every verdict cell")
    if reviewed == 0:
        raise DataError(f"{path}: no reviewed rows", hint="fill in the verdict column")
    return ReviewSheet(Review(approved, reviewed), comments)
