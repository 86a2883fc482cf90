"""`loraops init`: a new task's workspace, on the running stack when there is one.

It holds params.yaml (commented; the stack's base model and training settings, the task's names and data
facts), the user's data under data/raw/, the Axolotl presets and dvc.yaml; git and DVC are initialised,
with a .gitignore that keeps out what loraops and DVC own, and everything is committed (the lineage of a
run names that commit).
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from loraops.config import load_params
from loraops.envs import repo_root
from loraops.errors import ConfigError, DataError, StackError
from loraops.scaffold.infer import TaskShape, infer_task
from loraops.scaffold.params_text import OwnPorts, StackLink, task_params_text
from loraops.services import ServiceManager, free_port, http_ok
from loraops.workspace import Workspace

GITIGNORE = """\
# What loraops and DVC own, not code: run-time state and caches, and the prepared splits (DVC versions
# them; dvc.lock records their hash).
.loraops/
/data/prepared/
"""
MODEL_NAME = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class InitResult:
    """What `loraops init` made."""

    root: Path
    model: str
    shape: TaskShape
    link: StackLink | None

    def next_commands(self) -> list[str]:
        return [f"loraops --workspace {self.root} up", f"loraops --workspace {self.root} retrain"]


def model_name_for(directory: Path) -> str:
    """A registered model name from a directory name: lower case, words joined by '-'."""
    name = MODEL_NAME.sub("-", directory.name.lower()).strip("-")
    return name or "task"


def stack_runs(root: Path) -> bool:
    """Whether the workspace at ``root`` runs a stack another task can join (its sync hook answers)."""
    if not (root / "params.yaml").is_file():
        return False
    hook = ServiceManager(root / ".loraops").get("sync")
    return hook is not None and http_ok(f"http://127.0.0.1:{hook.port}/health")


def find_stack(start: Path) -> Path | None:
    """The nearest workspace running a stack: ``start`` or a parent, else loraops' own checkout."""
    start = start.resolve()
    for candidate in (start, *start.parents, repo_root()):
        if stack_runs(candidate):
            return candidate
    return None


def link_to(stack_root: Path) -> StackLink:
    """How a workspace joins the stack that ``stack_root`` runs."""
    from loraops.stack.local import stack_urls

    ws = Workspace(stack_root.resolve())
    params = load_params(ws.params_file)
    urls = stack_urls(params)
    serving = params.serving
    return StackLink(
        workspace=str(ws.root),
        tracking_uri=urls.mlflow,
        prefect_api_url=urls.prefect_api,
        sync_url=urls.sync,
        serving_host=serving.host,
        serving_port=serving.port,
        api_key_file=str(ws.root / (serving.api_key_file or ws.state / "vllm-api.key")),
        admin_token_file=str(ws.root / (serving.admin_token_file or ws.state / "vllm-admin.token")),
    )


def answer_tokens_budget(answer: str, tokenizer_dir: Path | None) -> int:
    """max_tokens for answers up to ``answer``: its length in the base model's tokens (one token per
    character without the tokenizer, the most a byte-level one takes for ASCII), with room to spare."""
    tokens = len(answer)
    if tokenizer_dir is not None and (tokenizer_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        tokens = len(tokenizer.encode(answer, add_special_tokens=False).ids)
    return max(32, math.ceil(tokens * 1.25) + 8)


def served_base_model_dir(link: StackLink) -> Path | None:
    """The directory the stack's vLLM serves its base model from (its tokenizer counts the answers)."""
    from loraops.serving.vllm import VllmClient

    try:
        api_key = Path(link.api_key_file).read_text().strip()
        models = VllmClient(f"http://{link.serving_host}:{link.serving_port}", api_key=api_key).models()
    except Exception:  # the budget then assumes one token per character
        return None
    roots = [Path(m.root) for m in models if m.parent is None and m.root]
    return roots[0] if roots and roots[0].is_dir() else None


def stack_crons(link: StackLink) -> list[str]:
    """The crons of the retrain deployments already on the stack (none when Prefect does not answer)."""
    from loraops.stack.prefect_api import retrain_deployments

    try:
        return [c for row in retrain_deployments(link.prefect_api_url) for c in row.crons]
    except Exception:  # the joining task then gets the hour after the stack's own
        return []


def raw_examples(root: Path, params: dict[str, Any]) -> int | None:
    """How many examples the template workspace's training settings were chosen for: its raw data's."""
    raw = (params.get("data") or {}).get("raw")
    path = root / str(raw) if raw else None
    if path is None or not path.is_file():
        return None
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def init_workspace(
    dest: Path,
    data_file: Path,
    *,
    model: str | None = None,
    data_format: str | None = None,
    stack: Path | None = None,
    standalone: bool = False,
) -> InitResult:
    """Create the workspace of a new task in ``dest`` (absent or empty) from ``data_file`` (JSONL); on the
    stack of the workspace ``stack`` (default: the nearest running one) unless ``standalone``."""
    dest = dest.expanduser().resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ConfigError(f"{dest} is not empty", hint="give a new directory for the task's workspace")
    data_file = data_file.expanduser().resolve()
    if not data_file.is_file():
        raise DataError(f"{data_file}: file not found", hint="--data takes the task's JSONL training file")
    shape = infer_task(data_file.read_text("utf-8"), str(data_file))
    if data_format is not None and data_format != shape.format:
        raise DataError(
            f"{data_file}: the records are {shape.format}, not {data_format}",
            hint="leave --format out to use what the data holds",
        )
    stack_root: Path | None = None
    if not standalone:
        stack_root = stack.resolve() if stack is not None else find_stack(Path.cwd())
        if stack is not None and not stack_runs(stack_root):  # type: ignore[arg-type]
            raise StackError(
                f"no stack runs in {stack_root}", hint="`loraops up` there first, or leave --stack out"
            )
    link = link_to(stack_root) if stack_root is not None else None
    template_root = stack_root or repo_root()
    template: dict[str, Any] = yaml.safe_load((template_root / "params.yaml").read_text("utf-8")) or {}
    model = model or model_name_for(dest)
    ports = None
    if link is None:
        ports = OwnPorts(free_port(), free_port(), free_port(), free_port(), free_port())

    dest.mkdir(parents=True, exist_ok=True)
    try:
        raw = f"data/raw/{data_file.name}"
        (dest / "data" / "raw").mkdir(parents=True)
        shutil.copy2(data_file, dest / raw)
        presets = template_root / "axolotl_configs"
        shutil.copytree(
            presets if presets.is_dir() else repo_root() / "axolotl_configs", dest / "axolotl_configs"
        )
        shutil.copy2(repo_root() / "dvc.yaml", dest / "dvc.yaml")
        text = task_params_text(
            model=model,
            raw=raw,
            shape=shape,
            max_tokens=answer_tokens_budget(
                shape.longest_answer, served_base_model_dir(link) if link is not None else None
            ),
            template=template,
            link=link,
            ports=ports,
            created=datetime.now(UTC).strftime("%Y-%m-%d"),
            taken_crons=stack_crons(link) if link is not None else (),
            template_examples=raw_examples(template_root, template),
        )
        (dest / "params.yaml").write_text(text, encoding="utf-8")
        params = load_params(dest / "params.yaml")  # what a run will read: valid, or init fails here
        (dest / ".gitignore").write_text(GITIGNORE, encoding="utf-8")
        _git(dest, "init", "-q")
        from loraops.data.versioning import ensure_dvc_repo

        ensure_dvc_repo(Workspace(dest), params.data)
        _git(dest, "add", "-A")
        _git(dest, "commit", "-q", "-m", f"loraops init: task {model} ({shape.examples} examples)")
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)  # nothing half-made stays behind
        raise
    return InitResult(dest, model, shape, link)


def _git(root: Path, *args: str) -> None:
    identity: list[str] = []
    if args[0] == "commit" and not _git_identity(root):
        identity = ["-c", "user.name=loraops", "-c", "user.email=loraops@localhost"]
    proc = subprocess.run(["git", *identity, *args], cwd=root, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ConfigError(
            f"git {args[0]} failed in {root}: {proc.stderr.strip()[-500:]}", hint="is git installed?"
        )


def _git_identity(root: Path) -> bool:
    proc = subprocess.run(
        ["git", "config", "user.email"], cwd=root, capture_output=True, text=True, check=False
    )
    return proc.returncode == 0 and bool(proc.stdout.strip())
