"""Corrupt DVC objects, in the remote and in the local cache, on real DVC: named, never cached, repaired."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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
from loraops.cli import main
from loraops.data.integrity import CorruptDataError, cached_manifest, object_path, verify_version
from loraops.data.params import DataParams
from loraops.data.versioning import (
    DataVersion,
    checkout_data,
    configure_remote,
    prepare_data,
    push_data,
    run_dvc,
    version_data,
)
from loraops.files import file_md5
from loraops.workspace import Workspace

pytestmark = pytest.mark.slow  # a DVC repository and remote, with many real `dvc` runs

REMOTE = ".loraops/dvc-remote"


def corrupt(path: Path) -> str:
    """Bit rot: the content changes, DVC's read-only mode stays. Returns the new md5."""
    path.chmod(0o644)
    path.write_bytes(path.read_bytes() + b"rot\n")
    path.chmod(0o444)
    return file_md5(path)


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DataVersion]:
    """A workspace whose prepared data is versioned, pushed to its local remote and committed."""
    base = tmp_path_factory.mktemp("origin")
    ws = make_ws(base / "ws", build_tokenizer(base / "tok"))
    params = data_params(ws)
    write_jsonl(ws.root / params.raw, alpaca_records(60))
    prepare_data(ws, params, tokenizer_dir=base / "tok", sequence_len=256)
    version = version_data(ws, params)
    git(ws.root, "add", "-A")
    git(ws.root, "commit", "-qm", "data")
    return ws.root, version


def copy_of(origin: tuple[Path, DataVersion], dest: Path, *, cache: bool = True) -> Workspace:
    """A copy of the origin workspace with its own remote (and no DVC cache unless ``cache``)."""
    shutil.copytree(origin[0], dest, symlinks=True)
    ws = Workspace(dest)
    if not cache:
        shutil.rmtree(dest / ".dvc/cache")
    configure_remote(ws, data_params(ws))
    return ws


def train_md5(ws: Workspace, version: DataVersion) -> str:
    manifest = cached_manifest(ws.root / ".dvc/cache", version.dvc_hash)
    assert manifest is not None
    return manifest["train.jsonl"]


def test_the_remote_is_configured_with_dvc_verify(origin: tuple[Path, DataVersion], tmp_path: Path) -> None:
    ws = copy_of(origin, tmp_path / "ws")
    assert run_dvc(ws.root, "config", "--local", "remote.local.verify").strip() == "True"


def test_corrupt_remote_object_is_named_and_never_cached(
    origin: tuple[Path, DataVersion], tmp_path: Path
) -> None:
    _, version = origin
    fresh = copy_of(origin, tmp_path / "ws", cache=False)
    want = train_md5(Workspace(origin[0]), version)
    remote_obj = object_path(fresh.root / REMOTE, want)
    bad_md5 = corrupt(remote_obj)
    shutil.rmtree(fresh.root / "data/prepared")
    with pytest.raises(CorruptDataError) as err:
        checkout_data(fresh, version)
    assert (
        f"the remote copy of train.jsonl ({remote_obj}) is corrupt: md5 {bad_md5}, expected {want}"
        in err.value.message
    )
    assert (
        err.value.hint is not None
        and f"loraops data verify {version.tag()} --remote --repair" in err.value.hint
    )
    assert [(b.copy, b.relpath) for b in err.value.bad] == [("remote", "train.jsonl")]
    assert not object_path(fresh.root / ".dvc/cache", want).exists()  # nothing under the good name
    assert not (fresh.root / "data/prepared").exists()


def test_repair_from_a_good_cache_then_fetch_works(origin: tuple[Path, DataVersion], tmp_path: Path) -> None:
    _, version = origin
    good = copy_of(origin, tmp_path / "good")
    fresh = copy_of(origin, tmp_path / "fresh", cache=False)
    shared = DataParams.model_validate(
        {**data_params(fresh).model_dump(), "remote": {"url": str(good.root / REMOTE)}}
    )
    configure_remote(fresh, shared)
    corrupt(object_path(good.root / REMOTE, train_md5(good, version)))
    with pytest.raises(CorruptDataError):
        checkout_data(fresh, version)
    result = verify_version(good.root, version.dvc_hash, check_remote=True, repair=True)
    assert [b.relpath for b in result.repaired] == ["train.jsonl"] and result.remote_bad == []
    checkout_data(fresh, version)
    assert prepared_files(fresh) == prepared_files(good)


def test_corrupt_cache_object_is_found_named_and_removed(
    origin: tuple[Path, DataVersion], tmp_path: Path
) -> None:
    _, version = origin
    ws = copy_of(origin, tmp_path / "ws")
    want = train_md5(ws, version)
    cached = object_path(ws.root / ".dvc/cache", want)
    bad_md5 = corrupt(cached)
    # what DVC itself says about it (measured): in sync
    assert "in sync" in run_dvc(ws.root, "status", "-c")
    result = verify_version(ws.root, version.dvc_hash)
    assert [b.describe() for b in result.removed] == [
        f"the cache copy of train.jsonl ({cached}) is corrupt: md5 {bad_md5}, expected {want}"
    ]
    assert not cached.exists() and result.checked == 8


def test_checkout_replaces_a_corrupt_cache_object_from_the_remote(
    origin: tuple[Path, DataVersion], tmp_path: Path
) -> None:
    _, version = origin
    ws = copy_of(origin, tmp_path / "ws")
    expected = prepared_files(ws)
    cached = object_path(ws.root / ".dvc/cache", train_md5(ws, version))
    corrupt(cached)
    shutil.rmtree(ws.root / "data/prepared")
    notices: list[str] = []
    checkout_data(ws, version, on_notice=notices.append)
    assert prepared_files(ws) == expected and file_md5(cached) == train_md5(ws, version)
    assert len(notices) == 1 and notices[0].startswith("the cache copy of train.jsonl")


def test_push_refuses_a_corrupt_cache_object(origin: tuple[Path, DataVersion], tmp_path: Path) -> None:
    _, version = origin
    ws = copy_of(origin, tmp_path / "ws")
    corrupt(object_path(ws.root / ".dvc/cache", train_md5(ws, version)))
    before = snapshot(ws.root / REMOTE)
    with pytest.raises(CorruptDataError, match=r"not pushing data version .*cache copy of train\.jsonl"):
        push_data(ws, data_params(ws))
    assert snapshot(ws.root / REMOTE) == before


@pytest.mark.slow  # prepares and versions again
def test_version_re_adds_a_corrupt_cache_object_from_the_prepared_files(
    origin: tuple[Path, DataVersion], tmp_path: Path
) -> None:
    _, version = origin
    ws = copy_of(origin, tmp_path / "ws")
    cached = object_path(ws.root / ".dvc/cache", train_md5(ws, version))
    corrupt(cached)
    # DVC finds this copy current: nothing is prepared again
    assert prepare_data(
        ws, data_params(ws), tokenizer_dir=origin[0].parent / "tok", sequence_len=256
    ).unchanged
    assert version_data(ws, data_params(ws)).dvc_hash == version.dvc_hash
    assert file_md5(cached) == train_md5(ws, version)


def test_cli_verify_reports_and_exits_1(
    origin: tuple[Path, DataVersion], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, version = origin
    ws = copy_of(origin, tmp_path / "ws")
    corrupt(object_path(ws.root / REMOTE, train_md5(ws, version)))
    assert main(["--workspace", str(ws.root), "data", "verify", "--remote"]) == 1
    captured = capsys.readouterr()
    assert "the remote copy of train.jsonl" in captured.err and "--remote --repair" in captured.out


def test_checkout_heals_a_corrupt_cached_manifest_and_file(
    origin: tuple[Path, DataVersion], tmp_path: Path
) -> None:
    """A corrupt manifest hides the corrupt file from the first scrub; the second try fetches it."""
    _, version = origin
    ws = copy_of(origin, tmp_path / "ws")
    expected = prepared_files(ws)
    train = train_md5(ws, version)
    corrupt(object_path(ws.root / ".dvc/cache", train))
    corrupt(object_path(ws.root / ".dvc/cache", f"{version.dvc_hash}.dir"))
    notices: list[str] = []
    checkout_data(ws, version, on_notice=notices.append)
    assert prepared_files(ws) == expected
    assert [n.split(" (")[0] for n in notices] == [
        "the cache copy of the .dir manifest",
        "the cache copy of train.jsonl",
    ]


def test_repair_without_a_good_copy_says_so(origin: tuple[Path, DataVersion], tmp_path: Path) -> None:
    _, version = origin
    ws = copy_of(origin, tmp_path / "ws")
    train = train_md5(ws, version)
    corrupt(object_path(ws.root / REMOTE, train))
    corrupt(object_path(ws.root / ".dvc/cache", train))
    with pytest.raises(
        CorruptDataError, match=r"cannot repair the remote copy of train\.jsonl .*no good copy"
    ):
        verify_version(ws.root, version.dvc_hash, check_remote=True, repair=True)
