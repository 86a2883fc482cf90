"""S3 remote round trip against moto's server mode on loopback (started and stopped by this module)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
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
from loraops.data.prepare import prepare
from loraops.data.versioning import checkout_data, ensure_dvc_repo, version_data
from loraops.stack.process import free_port, http_ok
from loraops.workspace import Workspace

BUCKET = "loraops-data"


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not http_ok(f"{url}/moto-api/"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"moto_server did not start (exit {proc.poll()})")
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def test_s3_remote_round_trip(tmp_path: Path, moto_endpoint: str, aws_env: None) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    tok = build_tokenizer(tmp_path / "tok")
    remote = {"name": "s3store", "url": f"s3://{BUCKET}/prepared-data", "endpoint_url": moto_endpoint}
    ws = make_ws(tmp_path / "ws", tok, remote)
    params = data_params(ws)
    write_jsonl(ws.root / params.raw, alpaca_records(150))
    prepare(ws, params, tokenizer_dir=tok, sequence_len=256)
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
