"""The quality report (JSON for machines, HTML for people) and the review sample (CSV and HTML).

Everything written here is a pure function of the data, the params and the tokenizer: no timestamps
and no absolute paths, so that `dvc repro` of the prepare stage reproduces the same bytes.
"""

from __future__ import annotations

import csv
import itertools
import json
from importlib import resources
from pathlib import Path
from typing import IO, Any

import jinja2

from loraops.data.params import DataParams
from loraops.data.records import Format
from loraops.data.validate import SIZE_GUIDANCE, ScanResult, finding_dict

REPORT_SCHEMA = 1
LIST_LIMIT = 200
AXOLOTL_TYPE = {"alpaca": "alpaca", "chat": "chat_template"}


def _env() -> jinja2.Environment:
    loader = jinja2.FunctionLoader(
        lambda name: resources.files("loraops.data").joinpath("templates").joinpath(name).read_text("utf-8")
    )
    env = jinja2.Environment(loader=loader, autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda x: f"{100 * float(x):.1f}%"
    return env


def build_report(
    scan: ScanResult,
    params: DataParams,
    *,
    tokenizer: dict[str, Any] | None,
    prepared: dict[str, int] | None,
    dropped: dict[str, int] | None,
    review: dict[str, Any] | None,
) -> dict[str, Any]:
    n = scan.examples
    lo, hi = SIZE_GUIDANCE[params.task]
    issues = scan.issues
    by_code = [
        {"code": c, "severity": s, "count": k}
        for (c, s), k in sorted(issues.counts.items(), key=lambda kv: (kv[0][1] != "error", -kv[1], kv[0][0]))
    ]
    keys = scan.keys
    findings: dict[str, Any] = {name: finding_dict(f) for name, f in sorted(scan.findings.items())}
    if "exact_duplicates" in findings:
        findings["exact_duplicates"]["pairs"] = [list(p) for p in keys.exact_pairs[:LIST_LIMIT]]
        findings["near_duplicates"]["pairs"] = [list(p) for p in keys.near_pairs[:LIST_LIMIT]]
        findings["contradictions"]["groups"] = keys.contradiction_groups
        findings["contradictions"]["lines"] = keys.contradictions[:LIST_LIMIT]
    if "too_long" in findings:
        pairs = zip(scan.too_long, scan.too_long_tokens, strict=True)
        findings["too_long"]["lines"] = [[int(a), int(b)] for a, b in itertools.islice(pairs, LIST_LIMIT)]
    labels = {
        name: [
            {"value": v, "count": c, "share": round(c / sum(counts.values()), 4)}
            for v, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        ]
        for name, counts in sorted(scan.labels.categorical(n).items())
    }
    shapes = [
        {"shape": s, "count": c, "share": round(c / n, 4) if n else 0.0}
        for s, c in sorted(scan.shapes.most_common(10), key=lambda kv: (-kv[1], kv[0]))
    ]
    return {
        "schema": REPORT_SCHEMA,
        "file": scan.file,
        "ok": scan.ok,
        "format": {
            "name": scan.format,
            "source": scan.format_source,
            "axolotl_type": AXOLOTL_TYPE[scan.format],
        },
        "counts": {
            "lines": scan.lines,
            "examples": n,
            "rejected": scan.rejected,
            "blank_lines": scan.blank_lines,
            "split_before_drops": dict(scan.split_counts),
            "prepared": prepared,
            "dropped": dropped,
        },
        "size_guidance": {
            "task": params.task,
            "advised": [lo, hi],
            "examples": n,
            "verdict": "below" if n < lo else "above" if n > hi else "within",
        },
        "tokens": {
            "checked": tokenizer is not None,
            "tokenizer": tokenizer,
            "sequence_len": scan.sequence_len,
            "template": AXOLOTL_TYPE[scan.format],
            "lengths": scan.tokens.summary() if tokenizer else None,
            "histogram": scan.tokens.bins() if tokenizer else [],
        },
        "findings": findings,
        "distribution": {
            "input_chars": scan.input_chars.summary(),
            "input_histogram": scan.input_chars.bins(),
            "output_chars": scan.output_chars.summary(),
            "output_histogram": scan.output_chars.bins(),
            "output_shapes": shapes,
            "labels": labels,
        },
        "issues": {
            "errors": issues.errors,
            "warnings": issues.warnings,
            "by_code": by_code,
            "list": [i.as_dict() for i in issues.sorted_kept()[:LIST_LIMIT]],
            "listed": min(LIST_LIMIT, len(issues.kept)),
        },
        "review": review,
        "params": params.model_dump(mode="json", exclude={"remote"}),
    }


def write_report(report: dict[str, Any], json_path: Path, html_path: Path) -> None:
    json_path.write_text(json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n", "utf-8")
    html = _env().get_template("report.html.jinja").render(r=report)
    html_path.write_text(html, "utf-8")


def review_columns(fmt: Format) -> list[str]:
    if fmt == "alpaca":
        return ["split", "line", "tokens", "instruction", "input", "output", "verdict", "comment"]
    return ["split", "line", "tokens", "conversation", "answer", "verdict", "comment"]


def review_row(fmt: Format, split: str, line: int, tokens: int, record: dict[str, Any]) -> list[str]:
    if fmt == "alpaca":
        texts = [record["instruction"], record["input"], record["output"]]
    else:
        msgs = record["messages"]
        texts = ["\n\n".join(f"[{m['role']}] {m['content']}" for m in msgs[:-1]), msgs[-1]["content"]]
    return [split, str(line), str(tokens), *texts, "", ""]


class ReviewWriter:
    """Streams the review sample to CSV (for a spreadsheet) and HTML (to read in a browser)."""

    def __init__(self, fmt: Format, csv_path: Path, html_path: Path, intro: dict[str, Any]) -> None:
        self.fmt = fmt
        self.columns = review_columns(fmt)
        self.count = 0
        self._env = _env()
        self._rows_tmpl = self._env.get_template("review_rows.html.jinja")
        self._csv_fh: IO[str] = csv_path.open("w", encoding="utf-8", newline="")
        self._csv = csv.writer(self._csv_fh)
        self._csv.writerow(self.columns)
        self._html: IO[str] = html_path.open("w", encoding="utf-8")
        self._html.write(
            self._env.get_template("review_head.html.jinja").render(columns=self.columns, s=intro)
        )
        self._rows: list[list[str]] = []

    def add(self, split: str, line: int, tokens: int, record: dict[str, Any]) -> None:
        row = review_row(self.fmt, split, line, tokens, record)
        self._csv.writerow(row)
        self._rows.append(row)
        self.count += 1
        if len(self._rows) >= 1000:
            self._drain()

    def _drain(self) -> None:
        rows, self._rows = self._rows, []
        for chunk in self._rows_tmpl.generate(rows=rows):
            self._html.write(chunk)

    def close(self) -> None:
        self._drain()
        self._html.write(f"</tbody></table>\n<p>{self.count} examples.</p>\n</body></html>\n")
        self._html.close()
        self._csv_fh.close()
