"""Prepared data under DVC: the `prepare` stage of dvc.yaml, the remote, push, and checkout by version.

DVC owns the staleness of the prepared data: ``prepare_data`` asks `dvc status` whether the `prepare`
stage is stale against dvc.lock (raw file, params, outputs) and prepares only then, recording the new
outputs with `dvc commit`, as `dvc repro` would.

The only side effects of versioning are here: the `dvc` CLI of the control environment (run as a
subprocess) and DVC's own config writer. The data version is the DVC content hash of the prepared
directory (the md5 of its ``.dir`` manifest) plus the git commit of the workspace. Restoring a version
needs only the hash: the manifest and files are taken from the DVC cache, else pulled from the remote,
checked against the manifest and swapped in as a whole.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from loraops.data.integrity import (
    CorruptDataError,
    bad_objects_error,
    cache_dir,
    diagnose_fetch,
    missing_from_cache,
    object_path,
    parse_manifest,
    scrub_cache,
)
from loraops.data.params import DataParams
from loraops.data.prepare import PrepareResult, prepare, publish_dir, recover_dir
from loraops.data.validate import OnIssue
from loraops.envs import inherited_environ
from loraops.errors import DataError
from loraops.files import file_md5, write_text_atomic
from loraops.train.params import TrainParams
from loraops.vcs import git_commit
from loraops.workspace import Workspace

STAGE = "prepare"
_HASH = re.compile(r"^[0-9a-f]{32}$")
# Kept out of DVC's view of the workspace: its scan of the tree would walk environments and state.
DVCIGNORE = ("/.loraops/", "/.venv/", "/.venvs/")


@dataclass(frozen=True)
class DataVersion:
    """What a model was trained on: DVC content hash of the prepared dir, and the workspace commit."""

    dvc_hash: str  # md5 of the prepared directory's .dir manifest (without the ".dir" suffix)
    git_commit: str | None  # HEAD of the workspace, with "-dirty" when it had uncommitted changes
    path: str  # the prepared dir, relative to the workspace

    def tag(self) -> str:
        """``<dvc_hash>@<git_commit>``: what `loraops data checkout` takes."""
        return f"{self.dvc_hash}@{self.git_commit or 'none'}"

    def as_tags(self) -> dict[str, str]:
        """MLflow tags for runs and registered versions."""
        return {
            "data.version": self.tag(),
            "data.dvc_hash": self.dvc_hash,
            "data.git_commit": self.git_commit or "",
            "data.path": self.path,
        }

    @classmethod
    def parse(cls, text: str, path: str = "data/prepared") -> DataVersion:
        """Accepts ``<hash>``, ``<hash>.dir`` or ``<hash>@<commit>``."""
        digest, _, commit = text.strip().partition("@")
        digest = digest.removesuffix(".dir")
        if not _HASH.match(digest):
            raise DataError(
                f"not a data version: {text!r}",
                hint="expected <md5>@<commit> as printed by `loraops data version`",
            )
        return cls(digest, commit if commit and commit != "none" else None, path)


# ---------------------------------------------------------------- the dvc CLI


def dvc_executable() -> Path:
    exe = Path(sys.executable).parent / "dvc"
    if not exe.exists():
        found = shutil.which("dvc")
        if found is None:
            raise DataError(
                "the dvc command is missing", hint="run `make envs` (dvc lives in the control env)"
            )
        exe = Path(found)
    return exe


def _env() -> dict[str, str]:
    env = inherited_environ()
    # `dvc repro` runs `loraops data prepare`: the control env's bin/ must be on its PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def run_dvc(cwd: Path, *args: str, what: str | None = None) -> str:
    cmd = [str(dvc_executable()), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines[-2:]
        raise DataError(
            f"{what or 'dvc ' + ' '.join(args)} failed: {' | '.join(errors)[:500]}",
            hint="see the DVC message; `dvc doctor` shows the DVC setup",
        )
    return proc.stdout


# ---------------------------------------------------------------- repository and remote


def remote_url(workspace: Workspace, params: DataParams) -> str:
    url = params.remote.url
    if params.remote.is_s3 or "://" in url:
        return url
    return str((workspace.root / url).resolve())


def ensure_dvc_repo(workspace: Workspace, params: DataParams) -> None:
    """`dvc init` when needed (the workspace must be a git repository), the DVC ignore list, the
    `prepare` stage in dvc.yaml, and the remote of params.yaml as the default remote.

    The remote goes to ``.dvc/config.local`` (not committed): params.yaml stays the one place to set
    it, and a local remote's absolute path never ends up in git.
    """
    root = workspace.root
    if not (root / ".git").exists():
        raise DataError(f"{root} is not a git repository", hint="run `git init` in the workspace first")
    if not (root / ".dvc").is_dir():
        run_dvc(root, "init", "--quiet", what="dvc init")
    ignore = root / ".dvcignore"
    lines = ignore.read_text("utf-8").splitlines() if ignore.exists() else []
    missing = [p for p in DVCIGNORE if p not in lines]
    if missing:
        with ignore.open("a", encoding="utf-8") as fh:
            fh.write("".join(f"{p}\n" for p in missing))
    ensure_prepare_stage(workspace, params)
    configure_remote(workspace, params)


def configure_remote(workspace: Workspace, params: DataParams) -> None:
    """Make data.remote of params.yaml the default DVC remote (in .dvc/config.local), with DVC's
    ``verify`` on."""
    from dvc.config import Config

    config = Config(dvc_dir=str(workspace.root / ".dvc"), validate=False)
    with config.edit("local") as conf:
        # verify: DVC hashes every object it fetches and deletes a corrupt one instead of caching it
        remote: dict[str, Any] = {"url": remote_url(workspace, params), "verify": True}
        if params.remote.endpoint_url:
            remote["endpointurl"] = params.remote.endpoint_url
        conf["remote"][params.remote.name] = remote
        conf["core"]["remote"] = params.remote.name


def prepare_stage(workspace: Workspace, params: DataParams) -> dict[str, Any]:
    """The `prepare` stage, with the inputs that change its output: the raw file and the params
    sections (only those params.yaml has: DVC fails on missing keys). DVC decides staleness on them."""
    present: dict[str, Any] = {}
    if workspace.params_file.exists():
        loaded = yaml.safe_load(workspace.params_file.read_text("utf-8"))
        present = loaded if isinstance(loaded, dict) else {}
    keys = []
    if "data" in present:
        keys.append("data")
    loaded_train = present.get("train")
    train: dict[str, Any] = loaded_train if isinstance(loaded_train, dict) else {}
    deps = [params.raw]
    if "sequence_len" in train:
        keys.append("train.sequence_len")
    else:  # the preset's sequence_len is the one the lengths are checked against
        preset = str(train.get("axolotl_config") or TrainParams().axolotl_config)
        if (workspace.root / preset).is_file():
            deps.append(preset)
    if "base_model" in present:
        keys.append("base_model")
    stage: dict[str, Any] = {"cmd": "loraops data prepare", "deps": deps}
    if keys:
        stage["params"] = keys
    stage["outs"] = [params.prepared_dir]
    return stage


def ensure_prepare_stage(workspace: Workspace, params: DataParams) -> None:
    """Add the `prepare` stage to dvc.yaml unless there is one (a user-written stage is kept)."""
    path = workspace.root / "dvc.yaml"
    doc: dict[str, Any] = {}
    if path.exists():
        loaded = yaml.safe_load(path.read_text("utf-8"))
        doc = loaded if isinstance(loaded, dict) else {}
    stages = doc.setdefault("stages", {}) or {}
    doc["stages"] = stages
    if STAGE in stages:
        # DVC fills ${data.raw}-style references from params.yaml; these two are the ones that matter here
        known = {"${data.raw}": params.raw, "${data.prepared_dir}": params.prepared_dir}

        def paths(key: str) -> list[str]:
            entries = [e if isinstance(e, str) else next(iter(e)) for e in stages[STAGE].get(key, []) or []]
            return [known.get(e.strip(), e) for e in entries]

        written = (
            yaml.safe_load(workspace.params_file.read_text("utf-8")) if workspace.params_file.exists() else {}
        )
        data_section = (written or {}).get("data") or {}
        for ref in known:
            key = ref[len("${data.") : -1]
            used = any(ref in str(e) for k in ("deps", "outs") for e in stages[STAGE].get(k, []) or [])
            if used and key not in data_section:
                raise DataError(
                    f"dvc.yaml takes data.{key} from params.yaml (DVC templating), which does not set it",
                    hint=f"add `{key}: {known[ref]}` under data: in params.yaml",
                )
        if params.prepared_dir not in paths("outs"):
            raise DataError(
                f"dvc.yaml: stage '{STAGE}' does not output {params.prepared_dir}",
                hint="make its outs `${data.prepared_dir}` (data.prepared_dir in params.yaml)",
            )
        if params.raw not in paths("deps"):
            raise DataError(
                f"dvc.yaml: stage '{STAGE}' does not depend on {params.raw} (data.raw), so DVC cannot "
                "record what the prepared data came from",
                hint="list `${data.raw}` under its deps",
            )
        return
    stages[STAGE] = prepare_stage(workspace, params)
    write_text_atomic(path, yaml.safe_dump(doc, sort_keys=False))


# ---------------------------------------------------------------- staleness, owned by DVC


def stage_changes(workspace: Workspace, params: DataParams) -> list[str]:
    """What `dvc status` finds changed in the `prepare` stage against dvc.lock (raw file, params,
    outputs, command); empty when the prepared data is up to date."""
    out = run_dvc(workspace.root, "status", "--json", STAGE, what="dvc status")
    found = json.loads(out or "{}")
    changes: list[str] = []
    for entry in next(iter(found.values()), []) if isinstance(found, dict) else []:
        if isinstance(entry, str):
            changes.append(entry)
            continue
        for kind, what in entry.items():
            items = _describe(what) if isinstance(what, dict) else ""
            changes.append(f"{kind}: {items}" if items else str(kind))
    return changes


def _describe(changed: dict[str, Any]) -> str:
    """``{"data/raw/x.jsonl": "modified", "params.yaml": {"data": "modified"}}`` -> one line."""
    return ", ".join(
        f"{path} ({_describe(state)})" if isinstance(state, dict) else f"{path} {state}"
        for path, state in changed.items()
    )


def prepare_data(
    workspace: Workspace,
    params: DataParams,
    *,
    tokenizer_dir: Path | None,
    sequence_len: int,
    on_issue: OnIssue | None = None,
    force: bool = False,
) -> PrepareResult:
    """Prepare the data when DVC says the `prepare` stage is stale (or ``force``), then record the new
    outputs in dvc.lock (`dvc commit`); else the last prepared data, marked unchanged.

    A workspace that is not a git repository has no DVC: there it prepares every time.
    """
    root = workspace.root
    if not (root / ".git").exists():
        return prepare(
            workspace, params, tokenizer_dir=tokenizer_dir, sequence_len=sequence_len, on_issue=on_issue
        )
    ensure_dvc_repo(workspace, params)
    prepared = (root / params.prepared_dir).resolve()
    recover_dir(prepared)
    if not force and not stage_changes(workspace, params):
        return PrepareResult.from_report(prepared)
    result = prepare(
        workspace, params, tokenizer_dir=tokenizer_dir, sequence_len=sequence_len, on_issue=on_issue
    )
    run_dvc(root, "commit", "--force", STAGE, what="dvc commit")
    return result


# ---------------------------------------------------------------- version and push


def locked_hash(workspace: Workspace, params: DataParams) -> str | None:
    """The md5 recorded for the prepared dir in dvc.lock, if any."""
    lock = workspace.root / "dvc.lock"
    if not lock.exists():
        return None
    doc = yaml.safe_load(lock.read_text("utf-8")) or {}
    for out in (doc.get("stages", {}).get(STAGE, {}) or {}).get("outs", []):
        if out.get("path") == params.prepared_dir:
            md5 = str(out.get("md5", ""))
            return md5.removesuffix(".dir") or None
    return None


def version_data(workspace: Workspace, params: DataParams, *, push: bool = True) -> DataVersion:
    """Record the prepared data in the DVC cache and dvc.lock (``dvc commit`` of the prepare stage),
    push it to the remote, and return its version.

    Refuses data that `loraops data prepare` (or `dvc repro`) did not produce from the current inputs
    (DVC's `prepare` stage is stale: missing, edited, or its inputs changed since): only data that
    passed validation is ever cached or pushed. Commits nothing when dvc.lock is current, so it also
    runs inside a DVC stage (`dvc exp run`). Re-running after an interrupted push uploads what is
    missing (DVC skips objects the remote has).
    """
    recover_dir((workspace.root / params.prepared_dir).resolve())
    ensure_dvc_repo(workspace, params)
    changes = stage_changes(workspace, params)
    if changes:
        raise DataError(
            f"{params.prepared_dir} is not the output of the last successful `loraops data prepare` "
            f"(DVC: {'; '.join(changes)})",
            hint="run `loraops data prepare` (or `dvc repro prepare`) first",
        )
    digest = locked_hash(workspace, params)
    if digest is None:
        raise DataError(f"dvc.lock has no hash for {params.prepared_dir}", hint="run `dvc repro prepare`")
    cache = cache_dir(workspace.root)
    if missing_from_cache(cache, digest) or scrub_cache(cache, digest):
        # not cached (a checkout from elsewhere) or a corrupt cache copy (DVC does not re-hash its
        # read-only objects): re-added from the prepared files, which `dvc status` vouched for
        run_dvc(workspace.root, "commit", "--force", STAGE, what="dvc commit")
    if push:
        push_data(workspace, params)
    return DataVersion(digest, git_commit(workspace.root), params.prepared_dir)


def push_data(workspace: Workspace, params: DataParams) -> str:
    """`dvc push` of the prepare stage's outputs to the configured remote (resumable: re-run it).

    The cached objects are hashed first: a corrupt one is removed and never uploaded.
    """
    digest = locked_hash(workspace, params)
    bad = scrub_cache(cache_dir(workspace.root), digest) if digest else []
    if bad and digest:
        raise CorruptDataError(
            f"not pushing data version {digest}: " + "; ".join(f"{b.describe()}; removed" for b in bad),
            bad,
            hint="run `loraops data version` to re-add it from the prepared files "
            "(or `loraops data prepare` first if they changed)",
        )
    return run_dvc(workspace.root, "push", "--remote", params.remote.name, STAGE, what="dvc push")


# ---------------------------------------------------------------- checkout


def verify_dir(directory: Path, manifest: dict[str, str]) -> None:
    """Raises DataError unless ``directory`` holds exactly the files of ``manifest``, byte for byte."""
    have = {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}
    if set(manifest) != have:
        raise DataError(f"restored data has files {sorted(have)}, expected {sorted(manifest)}")
    for rel, md5 in manifest.items():
        actual = file_md5(directory / rel)
        if actual != md5:
            raise DataError(f"restored file {rel} has md5 {actual}, expected {md5}")


Notice = Callable[[str], None]


def _checkout_repo(tmp: Path, cache: Path, remote_name: str | None, remotes: Any, digest: str) -> Path:
    """A throwaway DVC repo on the workspace's cache and remote (verify forced on), tracking ``digest``."""
    from dvc.config import Config

    repo = tmp / "repo"
    (repo / ".dvc").mkdir(parents=True)
    # what `dvc init --no-scm` writes, without its second of start-up
    with Config(dvc_dir=str(repo / ".dvc"), validate=False).edit("repo") as conf:
        conf["core"]["no_scm"] = True
    with Config(dvc_dir=str(repo / ".dvc"), validate=False).edit("local") as local:
        local["cache"]["dir"] = str(cache)
        if remote_name and remote_name in remotes:
            local["remote"][remote_name] = {**dict(remotes[remote_name]), "verify": True}
            local["core"]["remote"] = remote_name
    (repo / "data.dvc").write_text(
        yaml.safe_dump({"outs": [{"md5": f"{digest}.dir", "path": "data", "hash": "md5"}]}), "utf-8"
    )
    return repo


def _pull(repo: Path, cache: Path, version: DataVersion, remote_name: str | None) -> None:
    """`dvc pull` (fetch with verify, then checkout); on failure, raises with every bad or missing copy.

    ``remote_name`` is None when no remote is configured.
    """
    try:
        run_dvc(repo, "pull", "--quiet", "data.dvc", what=f"restoring data version {version.dvc_hash}")
        return
    except DataError as exc:
        failure = exc
    bad = diagnose_fetch(repo, cache, version.dvc_hash, remote_name)
    if any(b.actual is not None for b in bad):
        raise bad_objects_error(version.tag(), bad, remote_name) from None
    why = "; ".join(b.describe() for b in bad) or failure.message
    raise DataError(
        f"data version {version.dvc_hash} is neither in the DVC cache nor on remote '{remote_name}': {why}",
        hint="check the version and data.remote in params.yaml",
    ) from None


def checkout_data(
    workspace: Workspace, version: DataVersion, *, remote: str | None = None, on_notice: Notice | None = None
) -> Path:
    """Restore the prepared data of ``version`` into ``version.path`` (whole directory, atomically).

    The objects come from the workspace's DVC cache, else from its remote (``remote`` or the default
    one configured by ensure_dvc_repo), fetched with DVC's ``verify``. Every object is hashed: a
    corrupt cache copy is removed (and fetched again, said through ``on_notice``); a corrupt remote
    copy never reaches the cache and is named in the error. Returns the restored directory.
    """
    root = workspace.root
    if not (root / ".dvc").is_dir():
        raise DataError(f"{root} has no DVC repository", hint="run `loraops data version` first")
    from dvc.config import Config

    conf = Config(dvc_dir=str(root / ".dvc"), validate=False)
    cache = cache_dir(root)
    remote_name = remote or conf["core"].get("remote")
    configured = remote_name if remote_name and remote_name in conf["remote"] else None
    target = (root / version.path).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    refetch = f", fetching a good copy from remote '{configured}'" if configured else ""
    for found in scrub_cache(cache, version.dvc_hash):
        if on_notice is not None:
            on_notice(f"{found.describe()}; removed it{refetch}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        repo = _checkout_repo(tmp, cache, remote_name, conf["remote"], version.dvc_hash)
        # two tries: a corrupt cached manifest hides the files it lists from the first scrub
        for last in (False, True):
            _pull(repo, cache, version, configured)
            manifest = parse_manifest(object_path(cache, f"{version.dvc_hash}.dir").read_bytes())
            try:
                verify_dir(repo / "data", manifest)
                break
            except DataError:
                bad = scrub_cache(cache, version.dvc_hash)  # never leave what failed in the cache
                if not bad:
                    raise
                if last or configured is None:
                    raise bad_objects_error(version.tag(), bad, remote_name) from None
                for found in bad:
                    if on_notice is not None:
                        on_notice(f"{found.describe()}; removed it{refetch}")
                shutil.rmtree(repo / "data")
        publish_dir(repo / "data", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
