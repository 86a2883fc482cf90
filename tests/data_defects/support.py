"""Helpers of the data-stage tests: a throwaway tokenizer, workspaces, tree snapshots."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from loraops.data.params import DataParams
from loraops.prompts import CHAT_TEMPLATE, alpaca_prompt
from loraops.workspace import Workspace

DEFECTS = Path(__file__).resolve().parent


def build_tokenizer(model_dir: Path, *, bos: bool = True, vocab: int = 400) -> Path:
    """A byte-level BPE with <s>/</s> (BOS added by the post-processor, as Llama tokenizers do)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    model_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        alpaca_prompt(f"Triage ticket {i}: my order is late", "") + '{"category": "shipping"}'
        for i in range(60)
    ]
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=vocab,
            special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    tok.save(str(model_dir / "tokenizer.json"))
    config = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "chat_template": CHAT_TEMPLATE,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 512,
    }
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config), "utf-8")
    return model_dir


def alpaca_records(n: int, start: int = 0) -> list[dict[str, str]]:
    cats = ["billing", "technical", "account", "shipping"]
    return [
        {
            "instruction": f"Triage ticket number {i}: item {i * 7 % 13} broke",
            "input": "",
            "output": json.dumps({"category": cats[i % 4], "priority": "high" if i % 3 else "low"}),
        }
        for i in range(start, start + n)
    ]


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    return path


def git(root: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e",
    }
    return subprocess.run(
        ["git", *args], cwd=root, env=env, check=True, capture_output=True, text=True
    ).stdout


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file (and directory) under ``roots`` with the md5 of its content."""
    out: dict[str, str] = {}
    for root in roots:
        if not root.exists():
            out[str(root)] = "<absent>"
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for d in dirnames:
                out[str(Path(dirpath) / d)] = "<dir>"
            for f in sorted(filenames):
                p = Path(dirpath) / f
                out[str(p)] = hashlib.md5(p.read_bytes(), usedforsecurity=False).hexdigest()
    return out


def make_ws(root: Path, tok: Path, remote: dict[str, str] | None = None) -> Workspace:
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q")
    params = {
        "base_model": {"source": str(tok)},
        "data": {"raw": "data/raw/tickets.jsonl", "remote": remote or {"url": ".loraops/dvc-remote"}},
        "train": {"sequence_len": 256},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params), "utf-8")
    (root / ".gitignore").write_text(".loraops/\n", "utf-8")
    return Workspace(root)


def data_params(ws: Workspace) -> DataParams:
    return DataParams.model_validate(yaml.safe_load(ws.params_file.read_text("utf-8"))["data"])


def prepared_files(ws: Workspace) -> dict[str, str]:
    return {Path(k).name: v for k, v in snapshot(ws.root / "data/prepared").items()}
