"""`prepare`: outputs, reports, review sample, the result read back, atomicity and policies.

Whether the data is stale is DVC's call (test_data_versioning.py); `prepare` itself always prepares."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data_defects.support import alpaca_records, build_tokenizer, snapshot, write_jsonl
from loraops.data.params import DataParams
from loraops.data.prepare import DataValidationError, PrepareResult, prepare, recover_dir
from loraops.errors import DataError
from loraops.workspace import Workspace

SEQ = 256


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def _ws(tmp_path: Path, records: list[dict[str, object]]) -> Workspace:
    write_jsonl(tmp_path / "data/raw/tickets.jsonl", records)
    return Workspace(tmp_path)


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text("utf-8").splitlines()]


def test_prepare_writes_splits_reports_and_review(tmp_path: Path, tok: Path) -> None:
    records = alpaca_records(300)
    records.append(records[10])  # exact duplicate: left out
    ws = _ws(tmp_path, records)
    res = prepare(ws, DataParams(), tokenizer_dir=tok, sequence_len=SEQ)
    assert not res.unchanged and res.format == "alpaca" and res.format_source == "detected"
    assert res.examples == 300 and res.dropped == {"exact_duplicates": 1, "too_long": 0}
    prepared = tmp_path / "data/prepared"
    assert sorted(p.name for p in prepared.iterdir()) == sorted(
        ["train.jsonl", "val.jsonl", "test.jsonl", "report.json", "report.html", "review.csv", "review.html"]
    )
    rows = [r for s in ("train", "val", "test") for r in _lines(prepared / f"{s}.jsonl")]
    assert sorted(r["instruction"] for r in rows) == sorted(str(r["instruction"]) for r in records[:300])
    assert all(set(r) == {"instruction", "input", "output"} for r in rows)
    for split in ("train", "val", "test"):
        assert res.counts[split] == len(_lines(prepared / f"{split}.jsonl"))
    assert 0 < res.counts["val"] < 60 and 0 < res.counts["test"] < 60

    report = json.loads((prepared / "report.json").read_text("utf-8"))
    assert report["ok"] and report["format"] == {
        "name": "alpaca",
        "source": "detected",
        "axolotl_type": "alpaca",
    }
    assert report["tokens"]["checked"] and report["tokens"]["sequence_len"] == SEQ
    assert 40 < report["tokens"]["lengths"]["p50"] < SEQ
    assert report["findings"]["exact_duplicates"]["count"] == 1
    assert report["findings"]["exact_duplicates"]["pairs"] == [[301, 11]]
    assert report["size_guidance"] == {
        "task": "style",
        "advised": [100, 500],
        "examples": 301,
        "verdict": "within",
    }
    labels = report["distribution"]["labels"]
    assert {v["value"] for v in labels["output.category"]} == {"billing", "technical", "account", "shipping"}
    assert report["distribution"]["output_shapes"][0]["shape"] == "json{category,priority}"
    html = (prepared / "report.html").read_text("utf-8")
    assert "Data report" in html and "output.category" in html and "exact_duplicates" in html

    # Under 1,000 examples, all of them are in the review sample.
    with (prepared / "review.csv").open(encoding="utf-8", newline="") as fh:
        review = list(csv.DictReader(fh))
    assert len(review) == 300 == res.review_examples
    assert set(review[0]) == {
        "split",
        "line",
        "tokens",
        "instruction",
        "input",
        "output",
        "verdict",
        "comment",
    }
    assert "<table>" in (prepared / "review.html").read_text("utf-8")
    assert {str(p) for p in res.report_paths()} == {
        str(prepared / n) for n in ("report.json", "report.html", "review.csv", "review.html")
    }


def test_review_sample_of_a_large_dataset_is_a_stable_fraction(tmp_path: Path) -> None:
    ws = _ws(tmp_path, alpaca_records(3000))
    params = DataParams.model_validate({"review": {"fraction": 0.1}, "task": "domain"})
    res = prepare(ws, params, tokenizer_dir=None, sequence_len=SEQ)
    assert 240 <= res.review_examples <= 360
    first = (tmp_path / "data/prepared/review.csv").read_bytes()
    prepare(ws, params, tokenizer_dir=None, sequence_len=SEQ)
    assert (tmp_path / "data/prepared/review.csv").read_bytes() == first


def test_prepare_always_prepares_and_its_result_is_read_back(tmp_path: Path, tok: Path) -> None:
    ws = _ws(tmp_path, alpaca_records(500))
    first = prepare(ws, DataParams(), tokenizer_dir=tok, sequence_len=SEQ)
    before = snapshot(tmp_path / "data")
    again = prepare(ws, DataParams(), tokenizer_dir=tok, sequence_len=SEQ)
    assert not again.unchanged and snapshot(tmp_path / "data") == before  # same inputs, same bytes
    read = PrepareResult.from_report(tmp_path / "data/prepared")
    assert read.unchanged and "unchanged" in read.summary() and read.examples == 500
    assert {**read.to_json(), "unchanged": False} == first.to_json()
    (tmp_path / "data/prepared/report.json").write_text("{}", "utf-8")
    with pytest.raises(DataError, match=r"report\.json: not a report written by `loraops data prepare`"):
        PrepareResult.from_report(tmp_path / "data/prepared")


def test_failed_run_leaves_last_good_data(tmp_path: Path, tok: Path) -> None:
    ws = _ws(tmp_path, alpaca_records(200))
    prepare(ws, DataParams(), tokenizer_dir=tok, sequence_len=SEQ)
    good = snapshot(tmp_path / "data/prepared", tmp_path / ".loraops")
    with (tmp_path / "data/raw/tickets.jsonl").open("a", encoding="utf-8") as fh:
        fh.write('{"instruction": "x"}\n{not json}\n')
    with pytest.raises(DataValidationError) as err:
        prepare(ws, DataParams(), tokenizer_dir=tok, sequence_len=SEQ)
    assert [(i.line, i.code) for i in err.value.issues] == [(201, "missing_field"), (202, "invalid_json")]
    assert "2 error(s)" in str(err.value) and "tickets.jsonl:201" in str(err.value)
    assert snapshot(tmp_path / "data/prepared", tmp_path / ".loraops") == good
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["prepared", "raw"]


def test_too_long_examples_are_errors_unless_policy_allows(tmp_path: Path, tok: Path) -> None:
    records = alpaca_records(100)
    records[7]["output"] = "word " * 300
    ws = _ws(tmp_path, records)
    with pytest.raises(DataValidationError) as err:
        prepare(ws, DataParams(), tokenizer_dir=tok, sequence_len=SEQ)
    (issue,) = err.value.issues
    assert (issue.line, issue.code) == (8, "too_long") and f"more than sequence_len {SEQ}" in issue.message
    lenient = DataParams.model_validate({"policy": {"too_long": {"error_above": 0.05}}})
    res = prepare(ws, lenient, tokenizer_dir=tok, sequence_len=SEQ)
    assert res.dropped["too_long"] == 1 and res.examples == 99 and res.warnings >= 1
    report = json.loads(res.files["report_json"].read_text("utf-8"))
    assert report["findings"]["too_long"]["lines"][0][0] == 8
    assert report["findings"]["too_long"]["severity"] == "warning"


def test_duplicates_and_contradictions_follow_policy(tmp_path: Path) -> None:
    records = alpaca_records(100)
    records += [records[i] for i in range(30)]  # 30 exact duplicates: 23% > 20%
    ws = _ws(tmp_path, records)
    with pytest.raises(DataValidationError) as err:
        prepare(ws, DataParams(), tokenizer_dir=None, sequence_len=SEQ)
    assert {i.code for i in err.value.issues} == {"exact_duplicate"}
    keep = DataParams.model_validate(
        {"policy": {"exact_duplicates": {"error_above": 0.5}, "drop_exact_duplicates": False}}
    )
    assert prepare(ws, keep, tokenizer_dir=None, sequence_len=SEQ).examples == 130
    strict = DataParams.model_validate({"policy": {"contradictions": {"error_above": 0.0}}})
    records = alpaca_records(50)
    records.append({**records[3], "output": "something else"})
    ws = _ws(tmp_path, records)
    with pytest.raises(DataValidationError) as err:
        prepare(ws, strict, tokenizer_dir=None, sequence_len=SEQ)
    assert [(i.line, i.code) for i in err.value.issues] == [(4, "contradiction")]


def test_chat_format(tmp_path: Path, tok: Path) -> None:
    chats = [
        {
            "messages": [
                {"role": "system", "content": "You triage tickets."},
                {"role": "user", "content": f"Ticket {i}: my order is late"},
                {"role": "assistant", "content": ["shipping", "billing"][i % 2]},
            ]
        }
        for i in range(120)
    ]
    ws = _ws(tmp_path, chats)
    res = prepare(ws, DataParams(format="chat"), tokenizer_dir=tok, sequence_len=SEQ)
    assert res.format == "chat" and res.format_source == "declared" and res.examples == 120
    report = json.loads(res.files["report_json"].read_text("utf-8"))
    assert report["format"]["axolotl_type"] == "chat_template"
    assert report["distribution"]["labels"]["output"] == [
        {"value": "billing", "count": 60, "share": 0.5},
        {"value": "shipping", "count": 60, "share": 0.5},
    ]
    row = _lines(res.files["train"])[0]
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    header = res.files["review_csv"].read_text("utf-8").splitlines()[0]
    assert header == "split,line,tokens,conversation,answer,verdict,comment"


def test_output_is_byte_identical_across_workspaces(tmp_path: Path, tok: Path) -> None:
    for name in ("a", "b"):
        prepare(_ws(tmp_path / name, alpaca_records(150)), DataParams(), tokenizer_dir=tok, sequence_len=SEQ)
    a = {Path(k).name: v for k, v in snapshot(tmp_path / "a/data/prepared").items()}
    b = {Path(k).name: v for k, v in snapshot(tmp_path / "b/data/prepared").items()}
    assert a == b


def test_interrupted_publish_is_recovered(tmp_path: Path) -> None:
    ws = _ws(tmp_path, alpaca_records(50))
    prepare(ws, DataParams(), tokenizer_dir=None, sequence_len=SEQ)
    data = tmp_path / "data"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = dead.stdout.strip()
    # Killed between the two renames of the swap, with a half-built temporary dir beside.
    before = snapshot(data / "prepared")
    (data / "prepared").rename(data / f".prepared.old-{pid}-abc")
    (data / f".prepared.tmp-{pid}-xyz").mkdir()
    recover_dir(data / "prepared")  # what prepare and DVC versioning do first
    assert snapshot(data / "prepared") == before
    assert sorted(p.name for p in data.iterdir()) == ["prepared", "raw"]


@pytest.mark.slow
def test_memory_is_bounded_by_streaming(tmp_path: Path) -> None:
    """Peak RSS of a validation pass does not grow from 50k to 400k examples (no tokenizer): lines are
    streamed and the per-example keys spill to disk past their budget (lowered here to 50k rows)."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "import loraops.data.quality as quality\n"
        "quality.KEY_BUDGET_ROWS = 50_000\n"
        "from loraops.data.params import DataParams\n"
        "from loraops.data.validate import scan\n"
        "r = scan(Path(sys.argv[1]), DataParams(task='complex'), counter=None, sequence_len=None)\n"
        "assert r.ok, r.issues.kept[:3]\n"
        # VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork + exec.
        "hwm = next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM'))\n"
        "print(r.examples, hwm.split()[1])\n"
    )
    peaks = {}
    for n in (50_000, 400_000):
        path = tmp_path / f"{n}.jsonl"
        write_jsonl(path, alpaca_records(n))
        out = subprocess.run(
            [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
        )
        count, kib = out.stdout.split()
        assert int(count) == n
        peaks[n] = int(kib) / 1024
        path.unlink()
    assert peaks[400_000] - peaks[50_000] < 8, peaks


def test_raw_file_missing(tmp_path: Path) -> None:
    from loraops.errors import DataError

    with pytest.raises(DataError, match="raw data file not found"):
        prepare(Workspace(tmp_path), DataParams(), tokenizer_dir=None, sequence_len=SEQ)
    assert not (tmp_path / "data").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)
