"""`loraops data validate|prepare|version|checkout|verify` (argparse wiring; the work is elsewhere)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraops.data.params import DataParams
from loraops.data.records import Issue
from loraops.workspace import Workspace


@dataclass
class DataContext:
    """What the data commands need from params.yaml and the base model."""

    params: DataParams
    tokenizer_dir: Path | None
    sequence_len: int


Resolver = Callable[[Workspace, bool], DataContext]


def default_context(
    workspace: Workspace, need_tokenizer: bool, *, on_line: Callable[[str], None] | None = None
) -> DataContext:
    """params.yaml's data section, the run's sequence_len (params.yaml, else the preset), and the base
    model's directory (the built model is built first if it is not in the cache yet, with its progress
    sent to ``on_line``)."""
    from loraops.config import load_params

    params = load_params(workspace.params_file)
    tokenizer: Path | None = None
    if need_tokenizer:
        notice = build_notice(params.base_model.source, params.base_model.recipe, workspace.models)
        if notice is not None and on_line is not None:
            on_line(f"[basemodel] {notice}")
        source = params.base_model.resolve(workspace.models, on_line=on_line)
        tokenizer = Path(source)
    from loraops.train.settings import effective_sequence_len

    return DataContext(params.data, tokenizer, effective_sequence_len(workspace.root, params.train))


def build_notice(source: str, recipe: Any, models_dir: Path) -> str | None:
    """What to tell the user before the token-length check builds the base model; None when it is
    already built (or not a built model)."""
    from loraops.basemodel.build import BUILD_SOURCE, is_complete

    if source != BUILD_SOURCE or is_complete(models_dir / recipe.dir_name()):
        return None
    return (
        f"the token-length check needs the base model's tokenizer: building {recipe.name} first (once, "
        f"then cached in {models_dir}; about 5 minutes on 2 cores). --no-tokens skips the check"
    )


def _workspace(args: argparse.Namespace) -> Workspace:
    return Workspace.from_env(getattr(args, "workspace", None))


def _context(args: argparse.Namespace, resolve: Resolver, need_tokenizer: bool) -> DataContext:
    ws = _workspace(args)
    explicit_tok = getattr(args, "tokenizer", None)
    ctx = resolve(ws, need_tokenizer and explicit_tok is None)
    overrides: dict[str, Any] = {}
    if getattr(args, "file", None):
        overrides["raw"] = str(Path(args.file).resolve())  # as typed: relative to where the user is
    elif getattr(args, "raw", None):
        overrides["raw"] = args.raw  # relative to the workspace, as data.raw
    if getattr(args, "format", None):
        overrides["format"] = args.format
    if overrides:
        ctx.params = ctx.params.model_copy(update=overrides)
    if explicit_tok is not None:
        ctx.tokenizer_dir = Path(explicit_tok).resolve()
    if not need_tokenizer:
        ctx.tokenizer_dir = None
    if getattr(args, "sequence_len", None):
        ctx.sequence_len = args.sequence_len
    return ctx


def _printer(quiet: bool) -> Callable[[Issue], None]:
    def show(issue: Issue) -> None:
        if not quiet or issue.severity == "error":
            print(issue, file=sys.stderr, flush=True)

    return show


def cmd_validate(args: argparse.Namespace, resolve: Resolver = default_context) -> int:
    from loraops.data.prepare import validate
    from loraops.data.report import build_report, write_report
    from loraops.data.validate import summary_line

    ctx = _context(args, resolve, need_tokenizer=not args.no_tokens)
    result = validate(
        _workspace(args),
        ctx.params,
        tokenizer_dir=ctx.tokenizer_dir,
        sequence_len=ctx.sequence_len if ctx.tokenizer_dir else None,
        on_issue=_printer(args.quiet),
    )
    if args.report:
        out = Path(args.report)
        out.mkdir(parents=True, exist_ok=True)
        tok = {"name": ctx.tokenizer_dir.name, "md5": None} if ctx.tokenizer_dir else None
        report = build_report(result, ctx.params, tokenizer=tok, prepared=None, dropped=None, review=None)
        write_report(report, out / "report.json", out / "report.html")
    print(summary_line(result))
    return 0 if result.ok else 1


def cmd_prepare(args: argparse.Namespace, resolve: Resolver = default_context) -> int:
    """Prepare when DVC says the `prepare` stage is stale; run by DVC itself (`dvc repro`, `dvc exp run`:
    DVC_STAGE is set), prepare at once: DVC made that call and records the outputs."""
    from loraops.data.prepare import prepare
    from loraops.data.versioning import prepare_data

    ctx = _context(args, resolve, need_tokenizer=not args.no_tokens)
    ws, on_issue = _workspace(args), _printer(args.quiet)
    if os.environ.get("DVC_STAGE"):
        result = prepare(
            ws, ctx.params, tokenizer_dir=ctx.tokenizer_dir, sequence_len=ctx.sequence_len, on_issue=on_issue
        )
    else:
        result = prepare_data(
            ws,
            ctx.params,
            tokenizer_dir=ctx.tokenizer_dir,
            sequence_len=ctx.sequence_len,
            on_issue=on_issue,
            force=args.force,
        )
    print(json.dumps(result.to_json(), indent=2) if args.json else result.summary())
    return 0


def cmd_version(args: argparse.Namespace, resolve: Resolver = default_context) -> int:
    from loraops.data.versioning import version_data

    ctx = _context(args, resolve, need_tokenizer=False)
    version = version_data(_workspace(args), ctx.params, push=not args.no_push)
    print(json.dumps(version.as_tags(), indent=2) if args.json else version.tag())
    return 0


def cmd_checkout(args: argparse.Namespace, resolve: Resolver = default_context) -> int:
    from loraops.data.versioning import DataVersion, checkout_data, configure_remote

    ctx = _context(args, resolve, need_tokenizer=False)
    version = DataVersion.parse(args.version, ctx.params.prepared_dir)
    ws = _workspace(args)
    if (ws.root / ".dvc").is_dir():  # a fresh clone knows its remote from params.yaml only
        configure_remote(ws, ctx.params)
    path = checkout_data(
        ws, version, remote=args.remote, on_notice=lambda line: print(line, file=sys.stderr, flush=True)
    )
    print(f"restored data version {version.dvc_hash} into {path}")
    return 0


def cmd_verify(args: argparse.Namespace, resolve: Resolver = default_context) -> int:
    from loraops.data.integrity import verify_version
    from loraops.data.versioning import DataVersion, configure_remote, locked_hash
    from loraops.errors import DataError

    ctx = _context(args, resolve, need_tokenizer=False)
    ws = _workspace(args)
    if not (ws.root / ".dvc").is_dir():
        raise DataError(f"{ws.root} has no DVC repository", hint="run `loraops data version` first")
    text = args.version or locked_hash(ws, ctx.params)
    if text is None:
        raise DataError(
            "dvc.lock records no prepared data", hint="name a version, or run `loraops data version`"
        )
    version = DataVersion.parse(text, ctx.params.prepared_dir)
    configure_remote(ws, ctx.params)
    result = verify_version(
        ws.root,
        version.dvc_hash,
        remote=args.remote_name,
        check_remote=args.remote or args.repair,
        repair=args.repair,
    )
    for line in result.lines():
        print(line, file=sys.stderr)
    where = "cache and remote" if args.remote or args.repair else "cache"
    if result.ok:
        cached = f"{result.checked} cached objects" if result.checked else "not in this cache, nothing"
        print(f"data version {version.dvc_hash}: {cached} checked, {where} good")
        return 0
    tag = version.tag()
    if result.remote_bad:
        todo = f"run `loraops data verify {tag} --remote --repair` where a good copy is"
    else:
        todo = f"they were removed from the cache: `loraops data checkout {tag}` fetches good ones"
    print(f"data version {version.dvc_hash}: corrupt copies in the {where} (above); {todo}")
    return 1


def add_data_commands(subparsers: Any, resolve: Resolver = default_context) -> None:
    """Register `data validate|prepare|version|checkout|verify` on the CLI's subparsers."""
    data = subparsers.add_parser("data", help="validate, prepare and version the training data")
    sub = data.add_subparsers(dest="data_command", required=True)

    def tokens(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tokenizer", help="model directory with tokenizer.json (default: the base model)")
        p.add_argument("--sequence-len", type=int, help="override train.sequence_len")
        p.add_argument("--no-tokens", action="store_true", help="skip the token-length check")
        p.add_argument("file", nargs="?", help="the raw JSONL file (default: data.raw of params.yaml)")
        p.add_argument("--raw", help=argparse.SUPPRESS)  # the older spelling of FILE
        p.add_argument("--format", choices=["auto", "alpaca", "chat"], help="override data.format")
        p.add_argument("-q", "--quiet", action="store_true", help="print errors only, not warnings")

    def bind(func: Callable[[argparse.Namespace, Resolver], int]) -> Callable[[argparse.Namespace], int]:
        return lambda args: func(args, resolve)

    v = sub.add_parser("validate", help="check the raw data; exit code 1 when it has errors")
    tokens(v)
    v.add_argument("--report", help="also write report.json and report.html into this directory")
    v.set_defaults(func=bind(cmd_validate))

    p = sub.add_parser("prepare", help="validate, split, report; writes data.prepared_dir atomically")
    tokens(p)
    p.add_argument("--force", action="store_true", help="prepare even when DVC finds it up to date")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=bind(cmd_prepare))

    ver = sub.add_parser("version", help="track the prepared data with DVC, push it, print its version")
    ver.add_argument("--no-push", action="store_true", help="commit to the DVC cache only")
    ver.add_argument("--json", action="store_true", help="print the version as JSON tags")
    ver.set_defaults(func=bind(cmd_version))

    co = sub.add_parser("checkout", help="restore the prepared data of a version (<md5>@<commit>)")
    co.add_argument("version")
    co.add_argument("--remote", help="DVC remote to pull from (default: data.remote.name)")
    co.set_defaults(func=bind(cmd_checkout))

    ve = sub.add_parser(
        "verify", help="hash the DVC objects of a version (default: dvc.lock's); remove corrupt cache copies"
    )
    ve.add_argument("version", nargs="?", help="<md5>@<commit> (default: the prepared data in dvc.lock)")
    ve.add_argument("--remote", action="store_true", help="also hash the remote's copies (downloads them)")
    ve.add_argument("--remote-name", help="DVC remote to check (default: data.remote.name)")
    ve.add_argument("--repair", action="store_true", help="upload good cache copies over bad remote ones")
    ve.set_defaults(func=bind(cmd_verify))
