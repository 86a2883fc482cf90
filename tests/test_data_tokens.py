"""Token lengths: loraops' count equals what Axolotl itself produces, with the same tokenizer."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from data_defects.support import DEFECTS, build_tokenizer
from loraops.data.records import Format, check
from loraops.data.tokens import TokenCounter
from loraops.envs import trainer_env

ALPACA: list[dict[str, Any]] = [
    {"instruction": "Say hi", "input": "", "output": "hi"},
    {"instruction": "Translate", "input": "Bonjour à tous ✓", "output": "Hello everyone"},
    {"instruction": "End", "output": "done</s>"},  # the response already ends with EOS
    {"instruction": "Start", "input": "", "output": "<s>odd start"},  # and one starting with BOS
    {"instruction": "Spaces", "input": " x ", "output": " lead space\n\ntrail\n"},
    {"instruction": "Long " * 50, "input": "ctx " * 40, "output": "out " * 60},
]
CHATS: list[dict[str, Any]] = [
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c ✓"},
            {"role": "assistant", "content": "d"},
        ]
    },
]


def ours(model_dir: Path, fmt: Format, records: list[dict[str, Any]]) -> list[int]:
    examples = []
    for r in records:
        ex, _ = check(r, fmt)
        assert ex is not None
        examples.append(ex)
    return TokenCounter(model_dir).count(examples, fmt)


def test_counts_follow_the_alpaca_template(tmp_path: Path) -> None:
    """Without the trainer env: the structure of the count (BOS, EOS, template) on a known tokenizer."""
    with_bos = ours(build_tokenizer(tmp_path / "a"), "alpaca", ALPACA[:1])[0]
    without = ours(build_tokenizer(tmp_path / "b", bos=False), "alpaca", ALPACA[:1])[0]
    assert with_bos == without + 1
    counter = TokenCounter(tmp_path / "b")
    prompt = counter.tokenizer.encode(
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nSay hi\n\n### Response:\n"
    )
    assert without == len(prompt.ids) + len(counter.tokenizer.encode("hi").ids) + 1  # + EOS


@pytest.mark.slow
def test_counts_equal_axolotl(tmp_path: Path) -> None:
    trainer = trainer_env()
    if not trainer.exists():
        pytest.skip("trainer environment missing (make envs)")
    jobs = []
    for bos in (True, False):
        model = build_tokenizer(tmp_path / f"tok-{bos}", bos=bos)
        jobs += [
            {"model_dir": str(model), "format": "alpaca", "records": ALPACA},
            {"model_dir": str(model), "format": "chat", "records": CHATS},
        ]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs), "utf-8")
    subprocess.run(
        [trainer.python, DEFECTS / "axolotl_lengths.py", tmp_path / "jobs.json", tmp_path / "out.json"],
        env=trainer.environ({"OMP_NUM_THREADS": "1"}),
        check=True,
        capture_output=True,
    )
    theirs = json.loads((tmp_path / "out.json").read_text("utf-8"))
    mine = [ours(Path(j["model_dir"]), j["format"], j["records"]) for j in jobs]
    assert mine == theirs
