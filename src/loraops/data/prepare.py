"""`loraops data prepare`: validate, split, report, and publish the prepared directory atomically.

Everything is built in a temporary directory next to ``prepared_dir`` and swapped in by rename only
when the data passed validation, so a failed run leaves the last good prepared data untouched. A
fingerprint of the inputs (raw file content, data params, sequence_len, tokenizer files, this code's
output version) is kept in ``.loraops/data/``: preparing the same inputs again is a no-op that says
"unchanged" after a few stat() calls.
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
from loraops.prompts import CHAT_TEMPLATE, alpaca_prompt
from loraops.workspace import Workspace

# Bump when the prepared files change for the same inputs (their layout, the report, the split).
OUTPUT_VERSION = "1"
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
    fingerprint: str
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
        data["prepared_dir"] = Path(data["prepared_dir"])
        data["files"] = {k: Path(v) for k, v in data["files"].items()}
        return cls(**data)


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


# ---------------------------------------------------------------- fingerprint and stamp


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _stamp_path(workspace: Workspace, prepared: Path) -> Path:
    name = hashlib.sha256(str(prepared).encode()).hexdigest()[:12]
    return workspace.state / "data" / f"prepare-{name}.json"


def _read_stamp(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_stamp(path: Path, stamp: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(stamp, indent=1), "utf-8")
    tmp.replace(path)


def _digest(path: Path, cached: dict[str, Any] | None) -> str:
    """md5 of a file, reusing the cached value while size, mtime and inode are the same (as DVC does)."""
    stat = _stat(path)
    if cached and cached.get("stat") == stat and isinstance(cached.get("md5"), str):
        return str(cached["md5"])
    return file_md5(path)


def _fingerprint(
    raw: Path, params: DataParams, tokenizer_dir: Path | None, sequence_len: int, stamp: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    files = {"raw": raw}
    if tokenizer_dir is not None:
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (tokenizer_dir / name).exists():
                files[f"tokenizer/{name}"] = tokenizer_dir / name
    cached = stamp.get("inputs", {})
    inputs = {
        key: {"path": str(p), "stat": _stat(p), "md5": _digest(p, cached.get(key))}
        for key, p in files.items()
    }
    material = {
        "version": OUTPUT_VERSION,
        "templates": hashlib.sha256((alpaca_prompt("{i}", "{x}") + CHAT_TEMPLATE).encode()).hexdigest(),
        "inputs": {k: v["md5"] for k, v in inputs.items()},
        "params": params.model_dump(mode="json", exclude={"remote"}),
        "sequence_len": sequence_len if tokenizer_dir is not None else None,
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    return digest, inputs


def _outputs_state(prepared: Path) -> dict[str, list[int]] | None:
    if not prepared.is_dir():
        return None
    return {p.name: _stat(p) for p in sorted(prepared.iterdir()) if p.is_file()}


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


def is_current(workspace: Workspace, params: DataParams) -> bool:
    """Whether ``prepared_dir`` is exactly what the last successful prepare run wrote."""
    prepared = (workspace.root / params.prepared_dir).resolve()
    stamp = _read_stamp(_stamp_path(workspace, prepared))
    return bool(stamp) and stamp.get("outputs") == _outputs_state(prepared)


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
    force: bool = False,
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
    stamp_file = _stamp_path(workspace, prepared)
    stamp = _read_stamp(stamp_file)
    fingerprint, inputs = _fingerprint(raw, params, tokenizer_dir, sequence_len, stamp)
    if (
        not force
        and stamp.get("fingerprint") == fingerprint
        and stamp.get("outputs") == _outputs_state(prepared)
        and "result" in stamp
    ):
        if stamp.get("inputs") != inputs:  # same content, new mtime: remember it, skip the md5 next time
            stamp["inputs"] = inputs
            _write_stamp(stamp_file, stamp)
        done = PrepareResult.from_json(stamp["result"])
        done.unchanged = True
        return done

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
            {"name": tokenizer_dir.name, "md5": inputs["tokenizer/tokenizer.json"]["md5"]}
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
        with file_lock(stamp_file.with_suffix(".lock")):
            publish_dir(out, prepared)
            done = PrepareResult(
                format=result.format,
                format_source=result.format_source,
                counts=counts,
                dropped=dropped,
                warnings=result.issues.warnings,
                prepared_dir=prepared,
                files=_files(prepared),
                unchanged=False,
                fingerprint=fingerprint,
                review_examples=review.count,
            )
            new_stamp = {
                "fingerprint": fingerprint,
                "inputs": inputs,
                "outputs": _outputs_state(prepared),
                "result": done.to_json(),
            }
            _write_stamp(stamp_file, new_stamp)
        return done
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
