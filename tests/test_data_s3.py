"""S3 remote round trip against moto's server mode on loopback (started and stopped by this module)."""

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
    write_jsonl,
)
from loraops.data.integrity import CorruptDataError, cached_manifest, object_path, verify_version
from loraops.data.versioning import checkout_data, ensure_dvc_repo, prepare_data, version_data
from loraops.workspace import Workspace

BUCKET = "loraops-data"
pytest_plugins = ["fixtures_moto"]
pytestmark = pytest.mark.e2e  # DVC against moto's S3 server on loopback


def test_s3_remote_round_trip(tmp_path: Path, moto_endpoint: str, aws_env: None) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    tok = build_tokenizer(tmp_path / "tok")
    remote = {"name": "s3store", "url": f"s3://{BUCKET}/prepared-data", "endpoint_url": moto_endpoint}
    ws = make_ws(tmp_path / "ws", tok, remote)
    params = data_params(ws)
    write_jsonl(ws.root / params.raw, alpaca_records(150))
    prepare_data(ws, params, tokenizer_dir=tok, sequence_len=256)
    version = version_data(ws, params)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert f"prepared-data/files/md5/{version.dvc_hash[:2]}/{version.dvc_hash[2:]}.dir" in keys
    assert len(keys) == 8
    git(ws.root, "add", "-A")
    git(ws.root, "commit", "-qm", "data")
    original = prepared_files(ws)

    # A fresh checkout of the repository, with nothing but the S3 remote to get the data from.
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(ws.root), str(clone))
    fresh = Workspace(clone)
    ensure_dvc_repo(fresh, data_params(fresh))
    assert not (clone / ".dvc/cache/files").exists() and not (clone / "data/prepared").exists()
    checkout_data(fresh, version)
    assert prepared_files(fresh) == original
    # the pulled objects are in the clone's own cache now, and hash to the same version
    assert (clone / ".dvc/cache/files/md5" / version.dvc_hash[:2] / f"{version.dvc_hash[2:]}.dir").exists()
    shutil.rmtree(clone / "data/prepared")
    checkout_data(fresh, version)
    assert prepared_files(fresh) == original


@pytest.mark.slow
def test_corrupt_s3_object_is_named_by_url_and_repaired(
    tmp_path: Path, moto_endpoint: str, aws_env: None
) -> None:
    """An object overwritten on S3: the checkout names its s3:// URL and caches nothing under its name;
    `verify --remote --repair` from a good cache uploads it again, and the checkout then works."""
    import boto3

    bucket = "loraops-corrupt"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket=bucket)
    tok = build_tokenizer(tmp_path / "tok")
    remote = {"name": "s3store", "url": f"s3://{bucket}/d", "endpoint_url": moto_endpoint}
    ws = make_ws(tmp_path / "ws", tok, remote)
    params = data_params(ws)
    write_jsonl(ws.root / params.raw, alpaca_records(60))
    prepare_data(ws, params, tokenizer_dir=tok, sequence_len=256)
    version = version_data(ws, params)
    git(ws.root, "add", "-A")
    git(ws.root, "commit", "-qm", "data")
    train = (cached_manifest(ws.root / ".dvc/cache", version.dvc_hash) or {})["train.jsonl"]
    key = f"d/files/md5/{train[:2]}/{train[2:]}"
    s3.put_object(Bucket=bucket, Key=key, Body=b"not the training data\n")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(ws.root), str(clone))
    fresh = Workspace(clone)
    ensure_dvc_repo(fresh, data_params(fresh))
    with pytest.raises(
        CorruptDataError, match=f"the remote copy of train.jsonl \\(s3://{bucket}/{key}\\) is corrupt"
    ):
        checkout_data(fresh, version)
    assert not object_path(clone / ".dvc/cache", train).exists()
    assert [
        b.relpath for b in verify_version(ws.root, version.dvc_hash, repair=True, check_remote=True).repaired
    ] == ["train.jsonl"]
    checkout_data(fresh, version)
    assert prepared_files(fresh) == prepared_files(ws)
