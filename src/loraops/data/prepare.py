"""`loraops data prepare`: validate, split, report, and publish the prepared directory atomically.

Everything is built in a temporary directory next to ``prepared_dir`` and swapped in by rename only
when the data passed validation, so a failed run leaves the last good prepared data untouched.
``prepare`` always prepares: whether the prepared data is stale is DVC's call (the `prepare` stage of
dvc.yaml against dvc.lock), made by loraops.data.versioning.prepare_data and by `dvc repro`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loraops.data.params import DataParams
from loraops.data.records import Format, Issue
from loraops.data.report import ReviewWriter, build_report, write_report
from loraops.data.split import SPLITS, in_review, review_fraction
from loraops.data.tokens import TokenCounter
from loraops.data.validate import OnIssue, ScanResult, SplitSink, scan
from loraops.errors import DataError
from loraops.files import file_md5, publish_dir
from loraops.locks import file_lock
from loraops.workspace import Workspace

FILES = ("train.jsonl", "val.jsonl", "test.jsonl", "report.json", "report.html", "review.csv", "review.html")


class DataValidationError(DataError):
    """The raw data has errors; ``issues`` holds them (capped per kind), ``result`` the whole scan."""

    def __init__(self, result: ScanResult) -> None:
        self.result = result
        self.issues: list[Issue] = [i for i in result.issues.sorted_kept() if i.severity == "error"]
        shown = "; ".join(str(i) for i in self.issues[:3])
        more = result.issues.errors - min(3, len(self.issues))
        super().__init__(
            f"{result.issues.errors} error(s) in {result.file}: {shown}"
            + (f" (+{more} more)" if more > 0 else ""),
            hint="`loraops data validate` lists every problem; fix them and prepare again",
        )


@dataclass
class PrepareResult:
    format: Format
    format_source: str
    counts: dict[str, int]  # per split, as written
    dropped: dict[str, int]  # examples left out, per reason
    warnings: int
    prepared_dir: Path
    files: dict[str, Path]  # train, val, test, report_json, report_html, review_csv, review_html
    unchanged: bool
    review_examples: int = 0

    @property
    def examples(self) -> int:
        return sum(self.counts.values())

    def report_paths(self) -> list[Path]:
        """Files to log as MLflow artifacts."""
        return [self.files[k] for k in ("report_json", "report_html", "review_csv", "review_html")]

    def summary(self) -> str:
        state = "unchanged" if self.unchanged else "prepared"
        counts = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        dropped = ", ".join(f"{v} {k}" for k, v in self.dropped.items() if v)
        return (
            f"{state}: {self.prepared_dir} ({self.format}, {self.format_source}): {counts}"
            + (f"; left out {dropped}" if dropped else "")
            + f"; {self.warnings} warnings"
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["prepared_dir"] = str(self.prepared_dir)
        data["files"] = {k: str(v) for k, v in self.files.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PrepareResult:
        data = dict(data)
        data.pop("fingerprint", None)  # written by loraops before DVC decided staleness
        data["prepared_dir"] = Path(data["prepared_dir"])
        data["files"] = {k: Path(v) for k, v in data["files"].items()}
        return cls(**data)

    @classmethod
    def from_report(cls, prepared: Path) -> PrepareResult:
        """The result of the run that wrote ``prepared`` (read from its report.json), as unchanged."""
        path = prepared / "report.json"
        try:
            report = json.loads(path.read_text("utf-8"))
            counts, fmt = report["counts"], report["format"]
            return cls(
                format=fmt["name"],
                format_source=fmt["source"],
                counts=dict(counts["prepared"]),
                dropped=dict(counts["dropped"]),
                warnings=int(report["issues"]["warnings"]),
                prepared_dir=prepared,
                files=_files(prepared),
                unchanged=True,
                review_examples=int((report.get("review") or {}).get("examples", 0)),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"{path}: not a report written by `loraops data prepare` ({exc})",
                hint="run `loraops data prepare --force` to prepare the data again",
            ) from exc


def _files(prepared: Path) -> dict[str, Path]:
    return {
        "train": prepared / "train.jsonl",
        "val": prepared / "val.jsonl",
        "test": prepared / "test.jsonl",
        "report_json": prepared / "report.json",
        "report_html": prepared / "report.html",
        "review_csv": prepared / "review.csv",
        "review_html": prepared / "review.html",
    }


def _lock_path(workspace: Workspace, prepared: Path) -> Path:
    name = hashlib.sha256(str(prepared).encode()).hexdigest()[:12]
    return workspace.state / "data" / f"prepare-{name}.lock"


# ---------------------------------------------------------------- temporary dirs and the swap


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dir(prepared: Path) -> None:
    """Finish or undo what a killed run left: a missing prepared dir is restored from its backup,
    and temporary dirs of dead processes are removed."""
    parent = prepared.parent
    if not parent.is_dir():
        return
    for entry in parent.glob(f".{prepared.name}.*-*"):
        kind, _, rest = entry.name[len(prepared.name) + 2 :].partition("-")
        pid = rest.split("-")[0]
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        if kind == "old" and not prepared.exists():
            entry.rename(prepared)
        elif kind in ("old", "tmp"):
            shutil.rmtree(entry, ignore_errors=True)


# ---------------------------------------------------------------- the prepare run


def _finalize(
    result: ScanResult,
    sink: SplitSink,
    out: Path,
    params: DataParams,
    drop: set[int],
) -> tuple[dict[str, int], ReviewWriter, float]:
    """Part files -> final split files (minus dropped lines), and the review sample."""
    kept_total = result.examples - len(drop)
    share = review_fraction(kept_total, params.review)
    files = _files(out)
    review = ReviewWriter(
        result.format,
        files["review_csv"],
        files["review_html"],
        {"file": result.file, "share": share, "total": kept_total},
    )
    counts: dict[str, int] = dict.fromkeys(SPLITS, 0)
    for split in SPLITS:
        with (
            sink.paths[split].open(encoding="utf-8", newline="\n") as part,
            files[split].open("w", encoding="utf-8", newline="\n") as final,
        ):
            for row in part:
                line_s, tokens_s, review_s, record_json = row.split("\t", 3)
                line = int(line_s)
                if line in drop:
                    continue
                final.write(record_json)
                counts[split] += 1
                if in_review(int(review_s), share):
                    review.add(split, line, int(tokens_s), json.loads(record_json))
    review.close()
    return counts, review, share


def prepare(
    workspace: Workspace,
    params: DataParams,
    *,
    tokenizer_dir: Path | None,
    sequence_len: int,
    on_issue: OnIssue | None = None,
) -> PrepareResult:
    """Validate ``params.raw`` and write the prepared splits and reports to ``params.prepared_dir``.

    Raises DataValidationError (a DataError) listing the problems when the data has errors; then
    nothing in the workspace changes. Without a tokenizer, token lengths are not checked (a warning
    in the report).
    """
    root = workspace.root
    raw = (root / params.raw).resolve()
    prepared = (root / params.prepared_dir).resolve()
    if not raw.is_file():
        raise DataError(f"raw data file not found: {raw}", hint="set data.raw in params.yaml")
    recover_dir(prepared)
    counter = TokenCounter(tokenizer_dir) if tokenizer_dir is not None else None
    created_parent = not prepared.parent.exists()
    prepared.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{prepared.name}.tmp-{os.getpid()}-", dir=prepared.parent))
    try:
        out, work = tmp / "out", tmp / "work"
        out.mkdir()
        work.mkdir()
        sink = SplitSink(work)
        try:
            result = scan(
                raw,
                params,
                counter=counter,
                sequence_len=sequence_len,
                sink=sink,
                work_dir=work,
                on_issue=on_issue,
                display=_display(raw, root),
            )
        finally:
            sink.close()
        if not result.ok:
            raise DataValidationError(result)
        drop_exact = {int(x) for x in result.keys.drop_lines}
        drop_long = {int(x) for x in result.too_long}
        counts, review, share = _finalize(result, sink, out, params, drop_exact | drop_long)
        dropped = {"exact_duplicates": len(drop_exact), "too_long": len(drop_long - drop_exact)}
        files = _files(out)
        tok_info = (
            {"name": tokenizer_dir.name, "md5": file_md5(tokenizer_dir / "tokenizer.json")}
            if tokenizer_dir is not None and counter is not None
            else None
        )
        report = build_report(
            result,
            params,
            tokenizer=tok_info,
            prepared=counts,
            dropped=dropped,
            review={"examples": review.count, "share": share, "csv": "review.csv", "html": "review.html"},
        )
        write_report(report, files["report_json"], files["report_html"])
        for part in sink.paths.values():
            part.unlink()
        with file_lock(_lock_path(workspace, prepared)):
            publish_dir(out, prepared)
            return PrepareResult(
                format=result.format,
                format_source=result.format_source,
                counts=counts,
                dropped=dropped,
                warnings=result.issues.warnings,
                prepared_dir=prepared,
                files=_files(prepared),
                unchanged=False,
                review_examples=review.count,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created_parent and not prepared.exists():
            with contextlib.suppress(OSError):
                prepared.parent.rmdir()


def _display(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def validate(
    workspace: Workspace,
    params: DataParams,
    *,
    tokenizer_dir: Path | None,
    sequence_len: int | None,
    on_issue: OnIssue | None = None,
) -> ScanResult:
    """Check ``params.raw`` without writing anything; problems are in ``result.issues``."""
    raw = (workspace.root / params.raw).resolve()
    counter = TokenCounter(tokenizer_dir) if tokenizer_dir is not None else None
    return scan(
        raw,
        params,
        counter=counter,
        sequence_len=sequence_len,
        on_issue=on_issue,
        display=_display(raw, workspace.root),
    )
