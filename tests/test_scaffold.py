"""`loraops init`: what the data says about the task (pure), and the workspace it makes (git, DVC, files;
no service). The path on a running stack is e2e: test_e2e_demo.py, the second task."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from loraops.config import load_params
from loraops.data.demo import routing_schema, write_demo_dataset
from loraops.errors import ConfigError, DataError
from loraops.scaffold.create import answer_tokens_budget, init_workspace, model_name_for
from loraops.scaffold.infer import infer_task, json_schema_of
from loraops.scaffold.params_text import joining_cron, scaled_epochs


def _lines(*records: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def test_json_answers_give_a_schema_with_categories_as_enums_and_free_text_as_strings():
    answers = [
        json.dumps({"category": c, "item": f"item {i}", "count": i, "urgent": i % 2 == 0})
        for i, c in enumerate(["billing", "shipping", "billing", "shipping", "billing"])
    ]
    schema = json_schema_of(answers)
    assert schema == {
        "type": "object",
        "required": ["category", "item", "count", "urgent"],
        "additionalProperties": False,
        "properties": {
            "category": {"enum": ["billing", "shipping"]},
            "item": {"type": "string", "minLength": 1},
            "count": {"type": "integer"},
            "urgent": {"type": "boolean"},
        },
    }


def test_keys_missing_from_some_answers_are_optional_and_other_keys_allowed():
    schema = json_schema_of([json.dumps({"a": "x", "b": 1}), json.dumps({"a": "y"}), json.dumps({"a": "z"})])
    assert schema is not None
    assert schema["required"] == ["a"] and schema["additionalProperties"] is True
    assert schema["properties"]["a"] == {"type": "string", "minLength": 1}  # values seen once: not an enum


def test_answers_that_are_not_all_json_objects_are_scored_whole():
    text = _lines(
        {"instruction": "Translate: chat", "input": "", "output": "cat"},
        {"instruction": "Translate: chien", "input": "", "output": '{"word": "dog"}'},
    )
    shape = infer_task(text, "pairs.jsonl")
    assert (shape.format, shape.examples, shape.json_schema, shape.task_metric) == (
        "alpaca",
        2,
        None,
        "exact_match",
    )


def test_chat_records_are_read_from_their_last_turn():
    record = {
        "messages": [
            {"role": "user", "content": "Route: my parcel is late"},
            {"role": "assistant", "content": json.dumps({"team": "logistics"})},
        ]
    }
    shape = infer_task(_lines(record, record), "chat.jsonl")
    assert shape.format == "chat" and shape.task_metric == "json_fields"
    assert shape.json_schema is not None and shape.json_schema["properties"] == {
        "team": {"enum": ["logistics"]}
    }


def test_a_bad_line_is_named_by_file_and_line():
    text = _lines({"instruction": "a", "input": "", "output": "b"}) + "{not json\n"
    with pytest.raises(DataError, match=r"tasks\.jsonl:2: not a JSON object"):
        infer_task(text, "tasks.jsonl")
    with pytest.raises(DataError, match=r"tasks\.jsonl:1: neither alpaca nor chat \(keys: prompt\)"):
        infer_task(_lines({"prompt": "x"}), "tasks.jsonl")


def test_a_joining_task_runs_at_the_first_hour_no_other_task_uses():
    assert joining_cron("0 3 * * *") == "0 4 * * *"
    assert joining_cron("0 3 * * *", ["0 3 * * *", "0 4 * * *", "30 5 * * 1"]) == "0 6 * * *"
    assert joining_cron("15 23 * * 1", ["15 23 * * 1"]) == "15 0 * * 1"
    assert joining_cron("0 */6 * * *") == "0 */6 * * *"  # not a plain hour: left as it is
    assert joining_cron(None) is None


def test_names_and_token_budget():
    assert model_name_for(Path("/x/Ticket Items_2")) == "ticket-items-2"
    assert answer_tokens_budget("x" * 40, None) == 58  # one token per character without a tokenizer, + 25%
    assert answer_tokens_budget("short", None) == 32


def test_init_makes_a_committed_workspace_whose_params_load(tmp_path: Path):
    data = tmp_path / "routing.jsonl"
    write_demo_dataset(data, task="routing")
    dest = tmp_path / "Ticket Routing"
    result = init_workspace(dest, data, standalone=True)
    assert result.model == "ticket-routing" and result.link is None
    params = load_params(dest / "params.yaml")
    assert params.registry.model_name == "ticket-routing"
    assert (
        params.data.raw == "data/raw/routing.jsonl"
        and (dest / params.data.raw).read_bytes() == data.read_bytes()
    )
    assert params.data.format == "alpaca" and params.evaluate.task_metric == "json_fields"
    schema = params.evaluate.format.json_schema if params.evaluate.format else None
    expected = routing_schema()
    assert schema is not None and schema["required"] == expected["required"]
    assert {k: set(v["enum"]) for k, v in schema["properties"].items()} == {
        k: set(v["enum"])
        for k, v in expected["properties"].items()  # type: ignore[attr-defined]
    }
    ports = [params.serving.port, params.stack.mlflow_port, params.stack.prefect_port, params.stack.sync_port]
    assert len(set(ports)) == 4 and 8000 not in ports and 5000 not in ports
    assert (dest / "axolotl_configs" / Path(params.train.axolotl_config).name).is_file()
    assert (
        yaml.safe_load((dest / "dvc.yaml").read_text())["stages"]["prepare"]["cmd"] == "loraops data prepare"
    )
    assert (dest / ".dvc").is_dir() and "/data/prepared/" in (dest / ".gitignore").read_text()
    git = subprocess.run(
        ["git", "status", "--porcelain"], cwd=dest, capture_output=True, text=True, check=True
    )
    assert git.stdout == ""  # everything committed: a run's lineage names this commit
    log = subprocess.run(["git", "log", "--format=%s"], cwd=dest, capture_output=True, text=True, check=True)
    assert log.stdout.strip() == "loraops init: task ticket-routing (800 examples)"
    assert result.next_commands() == [f"loraops --workspace {dest} up", f"loraops --workspace {dest} retrain"]


def test_init_refuses_a_non_empty_directory_or_bad_data_and_leaves_nothing(tmp_path: Path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"instruction": "a", "input": "", "output": "b"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: a JSON list, not an object"):
        init_workspace(tmp_path / "new", data, standalone=True)
    assert not (tmp_path / "new").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    data.write_text('{"instruction": "a", "input": "", "output": "b"}\n')
    with pytest.raises(ConfigError, match="is not empty"):
        init_workspace(busy, data, standalone=True)
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    with pytest.raises(DataError, match="the records are alpaca, not chat"):
        init_workspace(tmp_path / "other", data, data_format="chat", standalone=True)
    assert not (tmp_path / "other").exists()


def test_epochs_keep_about_the_steps_the_template_was_tuned_for():
    assert scaled_epochs(2, 270, 270) == 2
    assert scaled_epochs(2, 270, 800) == 1  # 3x the data: one epoch, not two (over-training forgets)
    assert scaled_epochs(2, 270, 200) == 2  # never more than the template's
    assert scaled_epochs(3, 100, 10_000) == 1
