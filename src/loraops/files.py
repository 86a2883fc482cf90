"""Small file helpers shared by the stages."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from loraops.errors import StackError


def file_md5(path: Path) -> str:
    """MD5 of a file's content, read in 4 MiB chunks (DVC names its objects by it)."""
    return _file_digest(path, hashlib.md5(usedforsecurity=False))


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's content, read in 4 MiB chunks (how model files are named and checked)."""
    return _file_digest(path, hashlib.sha256())


def _file_digest(path: Path, digest: hashlib._Hash) -> str:
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def read_or_create_secret(path: Path, make: Callable[[], str] | None = None) -> str:
    """The secret stored in ``path``; on first use ``make()`` one (default: 32 random bytes, url-safe)
    and store it, created readable by the owner only (mode 600 from the start, never chmodded after)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        value = path.read_text(encoding="utf-8").strip()
        if not value:
            raise StackError(f"{path} is empty", hint="delete it so that a new secret is made") from None
        with contextlib.suppress(PermissionError):
            path.chmod(0o600)
        return value
    value = (make or (lambda: secrets.token_urlsafe(32)))()
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(value + "\n")
    return value


def publish_dir(built: Path, dest: Path) -> None:
    """Put the finished directory ``built`` at ``dest`` by renames only (same filesystem), replacing what
    was there: a reader sees the old directory or the new one, never a partial one. A process killed
    between the two renames leaves ``.<name>.old-<pid>-*`` next to ``dest`` (data/prepare.py's
    ``recover_dir`` restores it)."""
    old = dest.parent / f".{dest.name}.old-{os.getpid()}-{os.urandom(3).hex()}"
    if dest.exists():
        dest.rename(old)
    built.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename: a reader sees the old file or the new one, never half
    of it (parents are created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, "utf-8")
    tmp.replace(path)
