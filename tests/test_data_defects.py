"""Every defective file is rejected with its line and reason, and nothing changes anywhere afterwards."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from data_defects.support import DEFECTS, alpaca_records, build_tokenizer, git, snapshot, write_jsonl
from loraops.data.commands import DataContext, cmd_validate
from loraops.data.params import DataParams
from loraops.data.prepare import DataValidationError, prepare
from loraops.data.versioning import prepare_data, version_data
from loraops.workspace import Workspace

CASES: dict[str, dict[str, Any]] = json.loads((DEFECTS / "cases.json").read_text("utf-8"))
SEQ = 256


def test_there_are_at_least_25_distinct_defects() -> None:
    assert len(CASES) >= 25
    assert len({c["code"] for c in CASES.values()}) >= 20
    assert all((DEFECTS / "files" / f"{name}.jsonl").exists() for name in CASES)


@pytest.fixture(scope="module")
def versioned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Path]:
    """A workspace whose good data was prepared, versioned and pushed to its local remote."""
    root = tmp_path_factory.mktemp("ws")
    tok = build_tokenizer(tmp_path_factory.mktemp("tok"))
    git(root, "init", "-q")
    (root / "params.yaml").write_text("data:\n  raw: data/raw/tickets.jsonl\ntrain:\n  sequence_len: 256\n")
    write_jsonl(root / "data/raw/tickets.jsonl", alpaca_records(120))
    ws = Workspace(root)
    prepare_data(ws, DataParams(), tokenizer_dir=tok, sequence_len=SEQ)
    version_data(ws, DataParams())
    assert any((root / ".loraops/dvc-remote").rglob("*.dir"))
    return ws, tok


def _params(case: dict[str, Any]) -> DataParams:
    return DataParams.model_validate(case["params"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_defect_is_rejected_at_its_line_and_nothing_changes(
    name: str, versioned: tuple[Workspace, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ws, tok = versioned
    case = CASES[name]
    raw = ws.root / "data/raw/tickets.jsonl"
    good = raw.read_bytes()
    before = snapshot(ws.root)
    try:
        shutil.copyfile(DEFECTS / "files" / f"{name}.jsonl", raw)
        with pytest.raises(DataValidationError) as err:
            prepare(ws, _params(case), tokenizer_dir=tok, sequence_len=SEQ)
        found = [(i.line, i.code) for i in err.value.issues]
        assert (case["line"], case["code"]) in found, f"{name}: got {found}"
        assert str(case["line"] or "") in str(err.value) or case["line"] == 0
        after_prepare = snapshot(ws.root)

        # The CLI: every problem printed as file:line, exit code non-zero.
        args = argparse.Namespace(
            workspace=str(ws.root),
            no_tokens=False,
            quiet=False,
            report=None,
            raw=None,
            format=None,
            tokenizer=None,
            sequence_len=None,
        )
        code = cmd_validate(args, lambda _ws, _need: DataContext(_params(case), tok, SEQ))
        printed = capsys.readouterr().err
        assert code == 1
        where = f"data/raw/tickets.jsonl:{case['line']}:" if case["line"] else "data/raw/tickets.jsonl:"
        assert any(ln.startswith(where) and f"[{case['code']}]" in ln for ln in printed.splitlines()), printed
    finally:
        raw.write_bytes(good)
    after = snapshot(ws.root)
    for snap in (before, after_prepare, after):
        del snap[str(raw)]
    assert after_prepare == before, "prepare changed the workspace, the DVC cache or the remote"
    assert after == before, "validate changed the workspace"
