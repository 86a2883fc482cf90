"""Integrity of the DVC objects of a data version: the local cache and the remote, byte for byte.

What DVC itself does (DVC 3.67, measured): `dvc status` and `dvc status -c` compare names, not
content. A cache object DVC has made read-only (mode 444, as all objects it stores) is never hashed
again, so a corrupted one is reported in sync and checked out as is. A corrupt remote object is
fetched into the cache under its good name unless the remote has ``verify = true``; with it DVC
hashes each fetched object and deletes a bad one, but only says "Checkout failed ... Is your cache up
to date?". And `dvc push` never replaces an object the remote already has, corrupt or not.

So loraops hashes the objects of a version itself (the ``.dir`` manifest and every file it lists),
removes a bad cache copy at once (never a bad object under a good name), names every bad copy with
its path or URL, the file it belongs to and both md5s, and can re-upload a good cache copy over a bad
remote one (DVC's own object store API).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from loraops.errors import DataError
from loraops.files import file_md5

if TYPE_CHECKING:
    from dvc_data.hashfile.db import HashFileDB

MANIFEST = ".dir manifest"  # the relpath shown for a version's manifest object
Copy = Literal["cache", "remote"]


@dataclass(frozen=True)
class BadObject:
    """One copy of one DVC object that is missing or whose content does not match its md5 name."""

    copy: Copy
    location: str  # cache path, or the remote object's path/URL
    relpath: str  # the file of the prepared data it belongs to, or MANIFEST
    expected: str
    actual: str | None  # None: the object is missing

    def describe(self) -> str:
        """One line: which copy, where, of which file, expected vs actual md5."""
        name = f"the {MANIFEST}" if self.relpath == MANIFEST else self.relpath
        what = f"the {self.copy} copy of {name} ({self.location})"
        if self.actual is None:
            return f"{what} is missing"
        return f"{what} is corrupt: md5 {self.actual}, expected {self.expected}"


class CorruptDataError(DataError):
    """A DVC object of a data version is corrupt (or missing) in the cache or on the remote."""

    def __init__(self, message: str, bad: list[BadObject], *, hint: str | None = None) -> None:
        self.bad = bad
        super().__init__(message, hint=hint)


def repair_hint(tag: str) -> str:
    """What to run when a remote copy is bad."""
    return (
        "on a machine whose DVC cache has good copies run "
        f"`loraops data verify {tag} --remote --repair`, which uploads them over the bad ones "
        "(a plain `dvc push` skips objects the remote already has); with no good copy anywhere, "
        "re-create the data with `loraops data prepare` and `loraops data version`"
    )


# ---------------------------------------------------------------- the local cache


def cache_dir(root: Path) -> Path:
    """The DVC cache of the repository at ``root`` (cache.dir of its config, else .dvc/cache)."""
    from dvc.config import Config

    conf = Config(dvc_dir=str(root / ".dvc"), validate=False)
    configured = conf["cache"].get("dir")
    return Path(configured) if configured else root / ".dvc" / "cache"


def object_path(cache: Path, md5: str) -> Path:
    """Where DVC 3 stores the object ``md5`` (``<md5>.dir`` for a manifest) in ``cache``."""
    return cache / "files" / "md5" / md5[:2] / md5[2:]


def parse_manifest(raw: bytes) -> dict[str, str]:
    """``relpath -> md5`` of a ``.dir`` manifest's bytes."""
    entries = json.loads(raw)
    if not isinstance(entries, list):
        raise ValueError("a .dir manifest is a JSON list")
    return {str(e["relpath"]): str(e["md5"]) for e in entries}


def _remove(path: Path) -> None:
    """Delete a cache object (read-only as DVC leaves it: unlinking needs only the directory)."""
    path.unlink(missing_ok=True)


def _check_cache_object(cache: Path, md5: str, relpath: str, *, is_dir: bool = False) -> BadObject | None:
    """Hash one cache object; a corrupt one is removed and returned. A missing one is not an error."""
    path = object_path(cache, f"{md5}.dir" if is_dir else md5)
    if not path.is_file():
        return None
    actual = file_md5(path)
    if actual == md5:
        return None
    _remove(path)
    return BadObject("cache", str(path), relpath, md5, actual)


def cached_manifest(cache: Path, digest: str) -> dict[str, str] | None:
    """The files of version ``digest`` from its cached ``.dir`` manifest; None when it is not cached."""
    path = object_path(cache, f"{digest}.dir")
    if not path.is_file():
        return None
    return parse_manifest(path.read_bytes())


def scrub_cache(cache: Path, digest: str) -> list[BadObject]:
    """Hash the cached objects of version ``digest`` (manifest first) and remove the corrupt ones.

    Returns what was removed. Objects that are not in the cache are skipped: fetching them is DVC's job.
    """
    bad = _check_cache_object(cache, digest, MANIFEST, is_dir=True)
    if bad is not None:
        return [bad]
    manifest = cached_manifest(cache, digest)
    if manifest is None:
        return []
    found = (_check_cache_object(cache, md5, rel) for rel, md5 in sorted(manifest.items()))
    return [b for b in found if b is not None]


def missing_from_cache(cache: Path, digest: str) -> dict[str, str]:
    """``relpath -> md5`` of the objects of version ``digest`` that the cache lacks (MANIFEST: all)."""
    manifest = cached_manifest(cache, digest)
    if manifest is None:
        return {MANIFEST: digest}
    return {rel: md5 for rel, md5 in manifest.items() if not object_path(cache, md5).is_file()}


# ---------------------------------------------------------------- the remote


@contextmanager
def remote_odb(root: Path, name: str | None) -> Iterator[HashFileDB]:
    """DVC's object store of remote ``name`` (default: core.remote) of the repository at ``root``."""
    from dvc.repo import Repo

    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    with Repo(str(root)) as repo:
        yield repo.cloud.get_remote_odb(name, command="verify")


def _remote_path(odb: HashFileDB, md5: str) -> str:
    return str(odb.oid_to_path(md5))


def remote_location(odb: HashFileDB, md5: str) -> str:
    """The remote object's URL (a plain path for a local remote)."""
    path = _remote_path(odb, md5)
    url = str(odb.fs.unstrip_protocol(path))
    return path if url.startswith("file://") or "://" not in url else url


def remote_md5(odb: HashFileDB, md5: str) -> str | None:
    """md5 of the remote object named ``md5`` (streamed through DVC's filesystem); None if absent."""
    path = _remote_path(odb, md5)
    if not odb.fs.isfile(path):
        return None
    digest = hashlib.md5(usedforsecurity=False)
    with odb.fs.open(path, mode="rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def check_remote_object(odb: HashFileDB, md5: str, relpath: str) -> BadObject | None:
    """The remote copy of one object, when it is missing or corrupt."""
    name = f"{md5}.dir" if relpath == MANIFEST else md5
    actual = remote_md5(odb, name)
    if actual == md5:
        return None
    return BadObject("remote", remote_location(odb, name), relpath, md5, actual)


def remote_manifest(odb: HashFileDB, digest: str) -> dict[str, str] | None:
    """The manifest of version ``digest`` as the remote has it, if that copy is good."""
    path = _remote_path(odb, f"{digest}.dir")
    if not odb.fs.isfile(path):
        return None
    with odb.fs.open(path, mode="rb") as fh:
        raw = fh.read()
    if hashlib.md5(raw, usedforsecurity=False).hexdigest() != digest:
        return None
    return parse_manifest(raw)


def upload_over(odb: HashFileDB, cache: Path, bad: BadObject) -> None:
    """Replace a bad remote copy with the (checked) cache copy of the same object."""
    from dvc_objects.fs.local import LocalFileSystem

    name = f"{bad.expected}.dir" if bad.relpath == MANIFEST else bad.expected
    source = object_path(cache, name)
    if not source.is_file() or file_md5(source) != bad.expected:
        raise CorruptDataError(
            f"cannot repair {bad.describe()}: this cache has no good copy ({source})",
            [bad],
            hint="run the repair on a machine whose cache has one (`loraops data verify` checks it)",
        )
    if bad.actual is not None:
        odb.delete(name)
    odb.add(str(source), LocalFileSystem(), name, check_exists=False)


# ---------------------------------------------------------------- a whole version


@dataclass
class VerifyResult:
    """What `loraops data verify` found for one version."""

    digest: str
    checked: int = 0  # objects hashed in the cache
    removed: list[BadObject] = field(default_factory=list)  # corrupt cache copies, deleted
    not_cached: list[str] = field(default_factory=list)  # files whose object is not in the cache
    remote_bad: list[BadObject] = field(default_factory=list)  # still bad on the remote
    repaired: list[BadObject] = field(default_factory=list)  # remote copies replaced by good ones

    @property
    def ok(self) -> bool:
        """No corrupt copy was found (missing cache objects are fine: a checkout fetches them)."""
        return not self.removed and not self.remote_bad

    def lines(self) -> list[str]:
        """Human-readable findings, one per line."""
        out = [f"{b.describe()}; removed from the cache" for b in self.removed]
        out += [b.describe() for b in self.remote_bad]
        out += [f"repaired: {b.describe()}; uploaded the good cache copy" for b in self.repaired]
        return out


def verify_version(
    root: Path, digest: str, *, remote: str | None = None, check_remote: bool = False, repair: bool = False
) -> VerifyResult:
    """Hash every object of version ``digest`` in the cache (removing corrupt ones) and, with
    ``check_remote``, on the remote; ``repair`` uploads good cache copies over bad remote ones."""
    cache = cache_dir(root)
    result = VerifyResult(digest)
    result.removed = scrub_cache(cache, digest)
    manifest = cached_manifest(cache, digest)
    result.checked = 0 if manifest is None else len(manifest) + 1
    if not check_remote:
        if manifest is not None:
            result.not_cached = sorted(missing_from_cache(cache, digest))
        return result
    with remote_odb(root, remote) as odb:
        manifest = manifest or remote_manifest(odb, digest)
        wanted = {MANIFEST: digest, **(manifest or {})}
        bad = [b for rel, md5 in sorted(wanted.items()) if (b := check_remote_object(odb, md5, rel))]
        for b in bad if repair else []:
            upload_over(odb, cache, b)
            # checked again through the remote: DVC's upload must have left the right bytes there
            if check_remote_object(odb, b.expected, b.relpath) is None:
                result.repaired.append(b)
        result.remote_bad = [b for b in bad if b not in result.repaired]
    if manifest is not None:
        result.not_cached = sorted(missing_from_cache(cache, digest))
    return result


def diagnose_fetch(root: Path, cache: Path, digest: str, remote: str | None) -> list[BadObject]:
    """After a verified fetch: why objects of ``digest`` are still missing from the cache (each one's
    remote copy is absent or corrupt; DVC deleted a corrupt download itself)."""
    missing = missing_from_cache(cache, digest)
    if not missing:
        return []
    if remote is None:
        return [BadObject("cache", str(object_path(cache, m)), rel, m, None) for rel, m in missing.items()]
    with remote_odb(root, remote) as odb:
        found = (check_remote_object(odb, md5, rel) for rel, md5 in sorted(missing.items()))
        return [b for b in found if b is not None]


def bad_objects_error(tag: str, bad: list[BadObject], remote: str | None) -> CorruptDataError:
    """The error of a checkout that met corrupt objects: every bad copy, and what to run."""
    text = "; ".join(b.describe() for b in bad)
    return CorruptDataError(
        f"data version {tag} cannot be restored from remote '{remote}': {text}", bad, hint=repair_hint(tag)
    )
