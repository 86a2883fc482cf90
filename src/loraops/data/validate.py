"""The streaming pass over a raw JSONL file: every problem with its line, plus the quality statistics.

One line is in memory at a time (bounded by ``policy.max_line_bytes``), examples are processed in
batches (for batch tokenization), and dataset-level findings keep a few integers per example, spilled
to disk past a budget (see quality.KeyStore). When ``sink`` is given, valid examples are written to one
part file per split, each line prefixed with its source line, token count and review key.
"""

from __future__ import annotations

import tempfile
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from loraops.data.params import DataParams, Level, Threshold
from loraops.data.quality import CappedCounter, Histogram, KeyFindings, KeyStore, LabelStats
from loraops.data.records import (
    UTF8_BOM,
    UTF16_BOMS,
    Example,
    Format,
    Hasher,
    Issue,
    OutputFacts,
    Severity,
    canonical_line,
    check,
    label_fields,
    normalise,
    parse_line,
    vote_format,
)
from loraops.data.split import SPLITS, Split, Splitter, review_key
from loraops.data.tokens import TokenCounter
from loraops.errors import DataError

BATCH = 1024
DETECT_LINES = 200
KEEP_ISSUES_PER_CODE = 1000

# The brief's guidance on dataset size per kind of task.
SIZE_GUIDANCE: dict[str, tuple[int, int]] = {
    "style": (100, 500),
    "domain": (1_000, 10_000),
    "complex": (10_000, 100_000),
}

OnIssue = Callable[[Issue], None]


class IssueLog:
    """Every issue goes to ``on_issue``; counts are exact, the kept list is capped per code."""

    def __init__(self, file: str, on_issue: OnIssue | None = None) -> None:
        self.file = file
        self.on_issue = on_issue
        self.counts: Counter[tuple[str, str]] = Counter()
        self.kept: list[Issue] = []
        self._kept_per_code: Counter[str] = Counter()

    def add(self, line: int, code: str, message: str, severity: Severity = "error") -> None:
        issue = Issue(self.file, line, code, message, severity)
        self.counts[(code, severity)] += 1
        if self._kept_per_code[code] < KEEP_ISSUES_PER_CODE:
            self._kept_per_code[code] += 1
            self.kept.append(issue)
        if self.on_issue is not None:
            self.on_issue(issue)

    def add_at(self, line: int, code: str, message: str, level: Level) -> None:
        if level != "ignore":
            self.add(line, code, message, level)

    @property
    def errors(self) -> int:
        return sum(n for (_, sev), n in self.counts.items() if sev == "error")

    @property
    def warnings(self) -> int:
        return sum(n for (_, sev), n in self.counts.items() if sev == "warning")

    def sorted_kept(self) -> list[Issue]:
        return sorted(self.kept, key=lambda i: (i.line, i.severity, i.code))


class SplitSink:
    """Part files of the prepare run: ``line \\t tokens \\t review_key \\t canonical json``."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.paths = {s: work_dir / f"{s}.part" for s in SPLITS}
        self._files: dict[str, IO[str]] = {
            s: p.open("w", encoding="utf-8", newline="\n") for s, p in self.paths.items()
        }

    def write(self, split: Split, line: int, tokens: int, review: int, record_json: str) -> None:
        self._files[split].write(f"{line}\t{tokens}\t{review}\t{record_json}\n")

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()


@dataclass
class Finding:
    """A dataset-level finding judged against its policy threshold."""

    count: int
    share: float
    severity: Literal["error", "warning", "ignore", "none"]
    threshold: float


@dataclass
class ScanResult:
    file: str
    format: Format
    format_source: Literal["declared", "detected"]
    sequence_len: int | None
    tokenizer: str | None
    lines: int = 0
    examples: int = 0  # valid examples
    rejected: int = 0  # non-blank lines that are not valid examples
    blank_lines: int = 0
    split_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    tokens: Histogram = field(default_factory=Histogram)
    input_chars: Histogram = field(default_factory=Histogram)
    output_chars: Histogram = field(default_factory=Histogram)
    shapes: CappedCounter = field(default_factory=CappedCounter)
    labels: LabelStats = field(default_factory=LabelStats)
    too_long: array[int] = field(default_factory=lambda: array("Q"))  # lines
    too_long_tokens: array[int] = field(default_factory=lambda: array("Q"))
    keys: KeyFindings = field(default_factory=KeyFindings)
    findings: dict[str, Finding] = field(default_factory=dict)
    issues: IssueLog = field(default_factory=lambda: IssueLog(""))

    @property
    def ok(self) -> bool:
        return self.issues.errors == 0


def _judge(count: int, total: int, rule: Threshold) -> Finding:
    share = count / total if total else 0.0
    if count == 0:
        severity: Literal["error", "warning", "ignore", "none"] = "none"
    elif share > rule.error_above:
        severity = "error"
    else:
        severity = rule.level
    return Finding(count, round(share, 6), severity, rule.error_above)


def detect_format(path: Path, max_line_bytes: int) -> tuple[Format | None, bool]:
    """(majority format of the first records or None, whether any non-blank line was seen)."""
    votes: Counter[Format] = Counter()
    content = False
    with path.open("rb") as fh:
        for n in range(DETECT_LINES):
            raw = fh.readline(max_line_bytes + 1)
            if not raw:
                break
            parsed = parse_line(raw, first=n == 0)
            content = content or not parsed.blank
            fmt = vote_format(parsed.value) if parsed.ok else None
            if fmt is not None:
                votes[fmt] += 1
    if not votes:
        return None, content
    (top, n_top), *rest = votes.most_common()
    return (top if not rest or n_top > rest[0][1] else "alpaca"), True


class _Scan:
    def __init__(
        self,
        path: Path,
        display: str,
        params: DataParams,
        counter: TokenCounter | None,
        sequence_len: int | None,
        sink: SplitSink | None,
        spill_dir: Path,
        on_issue: OnIssue | None,
    ) -> None:
        self.path = path
        self.params = params
        self.policy = params.policy
        self.counter = counter
        self.sequence_len = sequence_len
        self.sink = sink
        self.log = IssueLog(display, on_issue)
        self.keys = KeyStore(spill_dir)
        self.splitter = Splitter(params.split)
        self.review_hash = review_key(params.review)
        self.plain_hash = Hasher("")
        self.output_facts = OutputFacts()
        self.batch: list[tuple[int, Example]] = []
        self.result: ScanResult | None = None

    def run(self) -> ScanResult:
        declared = self.params.format
        fmt: Format | None = None if declared == "auto" else declared
        source: Literal["declared", "detected"] = "declared"
        if fmt is None:
            source = "detected"
            fmt, content = detect_format(self.path, self.policy.max_line_bytes)
            if fmt is None and not content:
                fmt = "alpaca"  # nothing but blank lines: reported as an empty dataset
        res = ScanResult(
            file=self.log.file,
            format=fmt or "alpaca",
            format_source=source,
            sequence_len=self.sequence_len,
            tokenizer=str(self.counter.model_dir) if self.counter else None,
            issues=self.log,
        )
        self.result = res
        with self.path.open("rb") as fh:
            head = fh.read(4)
            fh.seek(0)
            if head.startswith(UTF16_BOMS):
                self.log.add(
                    0, "utf16", "the file is UTF-16 encoded (byte-order mark FF FE): save it as UTF-8"
                )
                return self._finish(res)
            if fmt is None:
                self.log.add(
                    0,
                    "unknown_format",
                    "cannot detect the format: no record has 'messages' (chat) or "
                    "'instruction'/'output' (alpaca); set data.format in params.yaml",
                )
            else:
                self._lines(fh, res, fmt)
        return self._finish(res)

    def _lines(self, fh: IO[bytes], res: ScanResult, fmt: Format) -> None:
        limit = self.policy.max_line_bytes
        log = self.log
        lineno = 0
        blank_level = self.policy.blank_lines
        levels: dict[str, Level] = {
            "unknown_field": self.policy.unknown_fields,
            "replacement_character": self.policy.replacement_characters,
        }
        while True:
            raw = fh.readline(limit + 1)
            if not raw:
                break
            lineno += 1
            if len(raw) > limit and not raw.endswith(b"\n"):
                while (rest := fh.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass
                log.add(lineno, "line_too_long", f"line longer than {limit} bytes (policy.max_line_bytes)")
                res.rejected += 1
                continue
            if lineno == 1 and raw.startswith(UTF8_BOM):
                log.add(1, "bom", "the file starts with a UTF-8 byte-order mark: save it without BOM")
            parsed = parse_line(raw, first=lineno == 1)
            if parsed.blank:
                res.blank_lines += 1
                log.add_at(lineno, "blank_line", "empty line", blank_level)
                continue
            if not parsed.ok:
                res.rejected += 1
                log.add(lineno, parsed.code, parsed.message)
                continue
            example, problems = check(parsed.value, fmt)
            for code, message, severity in problems:
                log.add_at(lineno, code, message, levels.get(code, severity))
            if example is None:
                res.rejected += 1
                continue
            self.batch.append((lineno, example))
            if len(self.batch) >= BATCH:
                self._flush(res, fmt)
        res.lines = lineno
        self._flush(res, fmt)

    def _flush(self, res: ScanResult, fmt: Format) -> None:
        batch = self.batch
        if not batch:
            return
        self.batch = []
        examples = [e for _, e in batch]
        lengths = self.counter.count(examples, fmt) if self.counter is not None else [0] * len(batch)
        limit = self.sequence_len
        plain = self.plain_hash
        facts = self.output_facts
        n_fields = 3 if fmt == "alpaca" else 1  # records with more fields have extra label candidates
        in_chars: list[int] = []
        out_chars: list[int] = []
        for (line, ex), n_tokens in zip(batch, lengths, strict=True):
            norm_in = normalise(ex.input_text)
            norm_out = normalise(ex.output_text)
            record_json = canonical_line(ex.record)
            input_key = plain(norm_in)
            self.keys.add(input_key, plain(norm_in + "\x1f" + norm_out), plain(record_json), line)
            split = self.splitter(norm_in)
            res.split_counts[split] += 1
            if limit is not None and n_tokens > limit:
                res.too_long.append(line)
                res.too_long_tokens.append(n_tokens)
            if self.sink is not None:
                self.sink.write(split, line, n_tokens, self.review_hash(norm_in), record_json)
            in_chars.append(len(ex.input_text))
            out_chars.append(len(ex.output_text))
            shape, out_labels = facts(ex.output_text)
            res.shapes.add(shape)
            res.labels.add(label_fields(ex, fmt, out_labels) if len(ex.record) > n_fields else out_labels)
        res.examples += len(batch)
        if self.counter is not None:
            res.tokens.add_many(lengths)
        res.input_chars.add_many(in_chars)
        res.output_chars.add_many(out_chars)

    def _finish(self, res: ScanResult) -> ScanResult:
        policy, log, n = self.policy, self.log, res.examples
        res.keys = self.keys.analyse(drop_exact=policy.drop_exact_duplicates)
        keys = res.keys
        if self.sequence_len is not None and self.counter is not None:
            f = res.findings["too_long"] = _judge(len(res.too_long), n, policy.too_long)
            if f.severity in ("error", "warning"):
                for line, tokens in zip(res.too_long, res.too_long_tokens, strict=True):
                    log.add(
                        line,
                        "too_long",
                        f"{tokens} tokens with the {res.format} template, more than sequence_len "
                        f"{self.sequence_len} (Axolotl would drop it silently)",
                        f.severity,
                    )
        f = res.findings["exact_duplicates"] = _judge(keys.exact_duplicates, n, policy.exact_duplicates)
        if f.severity in ("error", "warning"):
            for line, first in keys.exact_pairs:
                log.add(line, "exact_duplicate", f"exact duplicate of line {first}", f.severity)
        f = res.findings["near_duplicates"] = _judge(keys.near_duplicates, n, policy.near_duplicates)
        if f.severity in ("error", "warning"):
            for line, first in keys.near_pairs:
                log.add(
                    line, "near_duplicate", f"near duplicate of line {first} (normalised text)", f.severity
                )
        f = res.findings["contradictions"] = _judge(keys.contradicting_examples, n, policy.contradictions)
        if f.severity in ("error", "warning"):
            for group in keys.contradictions:
                others = ", ".join(str(x) for x in group[1:])
                log.add(
                    group[0],
                    "contradiction",
                    f"same input as line(s) {others} with a different output",
                    f.severity,
                )
        if n == 0:
            if log.errors == 0:
                log.add(0, "empty_dataset", "no examples in the file")
        elif n < policy.min_examples:
            log.add(
                0,
                "too_few_examples",
                f"{n} valid examples, fewer than policy.min_examples {policy.min_examples}",
            )
        lo, hi = SIZE_GUIDANCE[self.params.task]
        if n and n < lo:
            log.add_at(
                0,
                "dataset_size",
                f"{n} examples, fewer than the {lo}-{hi} advised for a {self.params.task} task",
                policy.size_guidance,
            )
        for name, counts in sorted(res.labels.categorical(n).items()):
            total = sum(counts.values())
            rare = sorted(v for v, c in counts.items() if c / total < policy.min_label_share)
            if rare:
                log.add_at(
                    0,
                    "label_imbalance",
                    f"field '{name}': value(s) {', '.join(repr(v) for v in rare[:5])} under "
                    f"{policy.min_label_share:.0%} of examples",
                    policy.label_imbalance,
                )
        return res


def scan(
    path: Path,
    params: DataParams,
    *,
    counter: TokenCounter | None,
    sequence_len: int | None,
    sink: SplitSink | None = None,
    work_dir: Path | None = None,
    on_issue: OnIssue | None = None,
    display: str | None = None,
) -> ScanResult:
    """One pass over ``path``. Never raises for bad data: the problems are in ``result.issues``."""
    if not path.is_file():
        raise DataError(f"raw data file not found: {path}", hint="set data.raw in params.yaml")
    with tempfile.TemporaryDirectory(prefix="loraops-keys-", dir=work_dir) as spill:
        return _Scan(
            path, display or str(path), params, counter, sequence_len, sink, Path(spill), on_issue
        ).run()


def summary_line(result: ScanResult) -> str:
    return (
        f"{result.file}: {result.examples} examples ({result.format}, {result.format_source}), "
        f"{result.issues.errors} errors, {result.issues.warnings} warnings"
    )


def finding_dict(f: Finding) -> dict[str, Any]:
    return {"count": f.count, "share": f.share, "severity": f.severity, "error_above": f.threshold}
