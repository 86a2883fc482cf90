"""DVC versioning with the local remote: version, checkout by version, resumed push, `dvc repro`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from data_defects.support import (
    alpaca_records,
    build_tokenizer,
    data_params,
    git,
    make_ws,
    prepared_files,
    snapshot,
    write_jsonl,
)
from loraops.data.prepare import prepare
from loraops.data.versioning import (
    DataVersion,
    checkout_data,
    ensure_dvc_repo,
    locked_hash,
    prepare_data,
    push_data,
    stage_changes,
    version_data,
)
from loraops.errors import DataError
from loraops.workspace import Workspace

SEQ = 256


def commit(ws: Workspace, message: str) -> None:
    git(ws.root, "add", "-A")
    git(ws.root, "commit", "-qm", message)


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.mark.slow  # many real `dvc` runs (~1.5 s of start-up each)
def test_version_checkout_roundtrip(tmp_path: Path, tok: Path) -> None:
    ws = make_ws(tmp_path / "ws", tok)
    params = data_params(ws)
    write_jsonl(ws.root / params.raw, alpaca_records(200))
    prepare_data(ws, params, tokenizer_dir=tok, sequence_len=SEQ)
    v1 = version_data(ws, params)
    files_v1 = prepared_files(ws)
    # versioning leaves the prepared files as they were: preparing again is still a no-op
    assert prepare_data(ws, params, tokenizer_dir=tok, sequence_len=SEQ).unchanged
    assert v1.dvc_hash == locked_hash(ws, params) and v1.path == "data/prepared"
    assert (ws.root / ".loraops/dvc-remote/files/md5" / v1.dvc_hash[:2] / f"{v1.dvc_hash[2:]}.dir").exists()
    stage = yaml.safe_load((ws.root / "dvc.yaml").read_text("utf-8"))["stages"]["prepare"]
    assert stage["cmd"] == "loraops data prepare" and stage["outs"] == ["data/prepared"]
    assert stage["params"] == ["data", "train.sequence_len", "base_model"]
    commit(ws, "data v1")

    write_jsonl(ws.root / params.raw, alpaca_records(260))
    prepare_data(ws, params, tokenizer_dir=tok, sequence_len=SEQ)
    v2 = version_data(ws, params)
    assert v2.dvc_hash != v1.dvc_hash
    assert v2.git_commit is not None and v2.git_commit.endswith("-dirty")  # dvc.lock not committed yet
    commit(ws, "data v2")
    files_v2 = prepared_files(ws)

    assert DataVersion.parse(v1.tag()) == v1
    checkout_data(ws, DataVersion.parse(v1.tag()))
    assert prepared_files(ws) == files_v1
    checkout_data(ws, v2)
    assert prepared_files(ws) == files_v2
    assert sorted(p.name for p in (ws.root / "data").iterdir()) == [".gitignore", "prepared", "raw"]

    # A fresh clone has an empty DVC cache: the data comes from the remote.
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(ws.root), str(clone))
    fresh = Workspace(clone)
    shutil.copytree(ws.root / ".loraops/dvc-remote", clone / ".loraops/dvc-remote")
    ensure_dvc_repo(fresh, data_params(fresh))
    assert not (clone / ".dvc/cache/files").exists()
    checkout_data(fresh, v1)
    assert prepared_files(fresh) == files_v1


def test_checkout_of_unknown_version_changes_nothing(tmp_path: Path, tok: Path) -> None:
    ws = make_ws(tmp_path, tok)
    params = data_params(ws)
    write_jsonl(ws.root / params.raw, alpaca_records(50))
    prepare_data(ws, params, tokenizer_dir=tok, sequence_len=SEQ)
    version_data(ws, params)
    before = snapshot(ws.root / "data", ws.root / ".dvc/cache", ws.root / ".loraops/dvc-remote")
    with pytest.raises(DataError, match="neither in the DVC cache nor on remote 'local'"):
        checkout_data(ws, DataVersion("0" * 32, None, params.prepared_dir))
    assert snapshot(ws.root / "data", ws.root / ".dvc/cache", ws.root / ".loraops/dvc-remote") == before
    with pytest.raises(DataError, match="not a data version"):
        DataVersion.parse("latest")


def test_version_refuses_data_not_made_by_prepare(tmp_path: Path, tok: Path) -> None:
    ws = make_ws(tmp_path, tok)
    params = data_params(ws)
    write_jsonl(ws.root / params.raw, alpaca_records(50))
    prepare_data(ws, params, tokenizer_dir=tok, sequence_len=SEQ)
    version_data(ws, params)
    before = snapshot(ws.root / ".dvc/cache", ws.root / ".loraops/dvc-remote", ws.root / "dvc.lock")
    with (ws.root / "data/prepared/train.jsonl").open("a", encoding="utf-8") as fh:
        fh.write('{"instruction": "sneaked in", "input": "", "output": "x"}\n')
    with pytest.raises(DataError, match=r"not the output of the last successful.*changed outs"):
        version_data(ws, params)
    write_jsonl(ws.root / params.raw, alpaca_records(60))
    prepare(ws, params, tokenizer_dir=tok, sequence_len=SEQ)  # prepared, but DVC did not record it
    with pytest.raises(DataError, match=r"not the output of the last successful.*changed deps"):
        version_data(ws, params)
    assert snapshot(ws.root / ".dvc/cache", ws.root / ".loraops/dvc-remote", ws.root / "dvc.lock") == before


@pytest.mark.slow  # many real `dvc` runs (~1.5 s of start-up each)
def test_dvc_decides_when_the_prepared_data_is_stale(tmp_path: Path, tok: Path) -> None:
    """`prepare_data` prepares only when `dvc status` finds the `prepare` stage stale against dvc.lock: a
    changed raw file, data param, sequence_len or hand-edited output; not a touched file or a rerun."""
    ws = make_ws(tmp_path, tok)
    params = data_params(ws)
    raw = ws.root / params.raw
    write_jsonl(raw, alpaca_records(200))
    first = prepare_data(ws, params, tokenizer_dir=tok, sequence_len=SEQ)
    assert not first.unchanged and stage_changes(ws, params) == []
    before = snapshot(ws.root / "data", ws.root / "dvc.lock")
    again = prepare_data(ws, params, tokenizer_dir=tok, sequence_len=SEQ)  # one `dvc status`, no preparing
    assert again.unchanged and again.summary().startswith("unchanged: ")
    assert (again.format, again.counts, again.dropped, again.files, again.review_examples) == (
        first.format,
        first.counts,
        first.dropped,
        first.files,
        first.review_examples,
    )
    os.utime(raw)  # touched, same content: DVC's hash is the same
    assert prepare_data(ws, params, tokenizer_dir=tok, sequence_len=SEQ).unchanged
    assert snapshot(ws.root / "data", ws.root / "dvc.lock") == before

    write_jsonl(raw, alpaca_records(210))  # a changed raw file
    assert any(params.raw in change for change in stage_changes(ws, params)), stage_changes(ws, params)
    assert prepare_data(ws, params, tokenizer_dir=tok, sequence_len=SEQ).counts != first.counts
    assert prepare_data(ws, params, tokenizer_dir=tok, sequence_len=SEQ).unchanged

    doc = yaml.safe_load(ws.params_file.read_text("utf-8"))
    doc["data"]["split"] = {"salt": "x"}  # a data param: DVC reads it from params.yaml
    ws.params_file.write_text(yaml.safe_dump(doc), "utf-8")
    assert any("params.yaml" in change for change in stage_changes(ws, params)), stage_changes(ws, params)
    salted = data_params(ws)
    assert not prepare_data(ws, salted, tokenizer_dir=tok, sequence_len=SEQ).unchanged
    doc["train"]["sequence_len"] = SEQ + 1  # the length the examples are checked against
    ws.params_file.write_text(yaml.safe_dump(doc), "utf-8")
    assert not prepare_data(ws, salted, tokenizer_dir=tok, sequence_len=SEQ + 1).unchanged
    assert prepare_data(ws, salted, tokenizer_dir=tok, sequence_len=SEQ + 1).unchanged

    (ws.root / "data/prepared/val.jsonl").write_text("", "utf-8")  # outputs edited by hand
    assert any("changed outs" in change for change in stage_changes(ws, salted)), stage_changes(ws, salted)
    assert not prepare_data(ws, salted, tokenizer_dir=tok, sequence_len=SEQ + 1).unchanged
    assert (ws.root / "data/prepared/val.jsonl").read_text("utf-8") and stage_changes(ws, salted) == []


@pytest.mark.slow  # many real `dvc` runs (~1.5 s of start-up each)
def test_interrupted_push_resumes(tmp_path: Path, tok: Path) -> None:
    ws = make_ws(tmp_path / "ws", tok)
    params = data_params(ws)
    write_jsonl(ws.root / params.raw, alpaca_records(120))
    prepare_data(ws, params, tokenizer_dir=tok, sequence_len=SEQ)
    version = version_data(ws, params)
    remote = ws.root / ".loraops/dvc-remote"
    objects = sorted(p for p in remote.rglob("*") if p.is_file())
    assert len(objects) == 8  # 7 files + the .dir manifest
    # What an interrupted push leaves: some objects uploaded, the manifest (uploaded last) not.
    for p in objects:
        if p.name.endswith(".dir") or p.stat().st_size % 2:
            p.unlink()
    missing = 8 - sum(1 for p in remote.rglob("*") if p.is_file())
    assert missing >= 1
    out = push_data(ws, params)
    assert f"{missing} file" in out and "pushed" in out
    assert sorted(p for p in remote.rglob("*") if p.is_file()) == objects
    # and the resumed remote is complete: a clone restores from it alone
    clone = tmp_path / "clone"
    git(ws.root, "add", "-A")
    git(ws.root, "commit", "-qm", "v")
    git(tmp_path, "clone", "-q", str(ws.root), str(clone))
    shutil.copytree(remote, clone / ".loraops/dvc-remote")
    fresh = Workspace(clone)
    ensure_dvc_repo(fresh, params)
    checkout_data(fresh, version)
    assert prepared_files(fresh) == prepared_files(ws)


@pytest.mark.slow
def test_dvc_repro_gives_the_same_result(tmp_path: Path, tok: Path) -> None:
    """`dvc repro` runs the stage's command (`loraops data prepare`) and records the same hash."""
    ws = make_ws(tmp_path, tok)
    params = data_params(ws)
    write_jsonl(ws.root / params.raw, alpaca_records(150))
    prepare_data(ws, params, tokenizer_dir=tok, sequence_len=SEQ)
    v = version_data(ws, params, push=False)
    before = prepared_files(ws)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("LORAOPS_WORKSPACE", None)
    dvc = str(Path(sys.executable).parent / "dvc")
    status = subprocess.run([dvc, "status", "prepare"], cwd=ws.root, env=env, capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout + status.stderr
    out = subprocess.run(
        [dvc, "repro", "--force", "prepare"], cwd=ws.root, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "prepared:" in out.stdout  # the loraops command ran (DVC removed the outputs first)
    assert locked_hash(ws, params) == v.dvc_hash
    assert prepared_files(ws) == before
    assert prepare_data(ws, params, tokenizer_dir=tok, sequence_len=SEQ).unchanged


@pytest.mark.slow  # many real `dvc` runs (~1.5 s of start-up each)
def test_the_shipped_dvc_yaml_takes_its_paths_from_params(tmp_path: Path, tok: Path) -> None:
    """The repository's dvc.yaml names ${data.raw} and ${data.prepared_dir}: a task whose raw file is not
    the demo's versions its data as is; a stage that depends on another file is refused in one line."""
    ws = make_ws(tmp_path / "ws", tok)
    doc = yaml.safe_load(ws.params_file.read_text("utf-8"))
    doc["data"]["raw"] = "data/raw/routing.jsonl"
    ws.params_file.write_text(yaml.safe_dump(doc), "utf-8")
    shutil.copy2(Path(__file__).resolve().parents[1] / "dvc.yaml", ws.root / "dvc.yaml")
    params = data_params(ws)
    write_jsonl(ws.root / params.raw, alpaca_records(120))
    with pytest.raises(DataError, match=r"takes data\.prepared_dir from params\.yaml"):
        # DVC reads the value from params.yaml, not loraops' default
        prepare_data(ws, params, tokenizer_dir=tok, sequence_len=SEQ)
    doc["data"]["prepared_dir"] = "data/prepared"
    ws.params_file.write_text(yaml.safe_dump(doc), "utf-8")
    prepare_data(ws, params, tokenizer_dir=tok, sequence_len=SEQ)
    assert version_data(ws, params, push=False).dvc_hash == locked_hash(ws, params)
    stage = yaml.safe_load((ws.root / "dvc.lock").read_text("utf-8"))["stages"]["prepare"]
    assert [d["path"] for d in stage["deps"]] == ["data/raw/routing.jsonl"]

    (ws.root / "dvc.yaml").write_text(
        "stages:\n  prepare:\n    cmd: loraops data prepare\n    deps: [data/raw/tickets.jsonl]\n"
        "    outs: [data/prepared]\n",
        "utf-8",
    )
    with pytest.raises(DataError, match=r"does not depend on data/raw/routing\.jsonl \(data\.raw\)"):
        version_data(ws, params, push=False)
