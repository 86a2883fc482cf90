"""The offline base model: recipe hashing, the skills corpus, the tokenizer, the build cache."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from tokenizers import Tokenizer

from loraops.basemodel import build as build_mod
from loraops.basemodel import recipe as recipe_mod
from loraops.basemodel.build import (
    build_base_model,
    check_lengths,
    default_template,
    is_complete,
    parse_losses,
    render_pretrain_config,
    resolve_base_model,
)
from loraops.basemodel.recipe import DEFAULT_RECIPE, BaseModelRecipe
from loraops.basemodel.skills import general_suite, is_heldout, tokenizer_texts, training_corpus
from loraops.basemodel.tokenizer import BOS, EOS, PAD, alpaca_token_count, corpus_tokenizer
from loraops.basemodel.writing import WRITING_SKILL
from loraops.data.demo import generate_tickets
from loraops.envs import PythonEnv, repo_root, trainer_env
from loraops.errors import ConfigError, DataError
from loraops.prompts import alpaca_prompt
from loraops.workspace import Workspace

SMALL = DEFAULT_RECIPE.model_copy(update={"examples_per_skill": 300})


def _recipe(**changes: object) -> BaseModelRecipe:
    return BaseModelRecipe.model_validate({**DEFAULT_RECIPE.model_dump(), **changes})


# --- recipe -------------------------------------------------------------------------------------


def test_fingerprint_is_stable_and_canonical() -> None:
    again = BaseModelRecipe.model_validate_json(DEFAULT_RECIPE.model_dump_json())
    assert again.fingerprint() == DEFAULT_RECIPE.fingerprint()
    assert len(DEFAULT_RECIPE.fingerprint()) == 64
    int(DEFAULT_RECIPE.fingerprint(), 16)
    assert DEFAULT_RECIPE.dir_name() == f"loraops-tiny-{DEFAULT_RECIPE.fingerprint()[:12]}"


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 7},
        {"vocab_size": 1500},
        {"num_layers": 3},
        {"learning_rate": 3.3e-4},
        {"examples_per_skill": 10},
        {"skills": ["count_up", "digit_words"]},
        {"name": "other"},
    ],
)
def test_fingerprint_changes_with_every_field(change: dict[str, object]) -> None:
    assert _recipe(**change) != DEFAULT_RECIPE
    assert _recipe(**change).fingerprint() != DEFAULT_RECIPE.fingerprint()


def test_fingerprint_changes_with_corpus_version(monkeypatch: pytest.MonkeyPatch) -> None:
    before = DEFAULT_RECIPE.fingerprint()
    monkeypatch.setattr(recipe_mod, "CORPUS_VERSION", recipe_mod.CORPUS_VERSION + "-next")
    assert DEFAULT_RECIPE.fingerprint() != before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_size": 256, "num_heads": 16}, "head size"),  # 16 is not a vLLM CPU head size
        ({"hidden_size": 250, "num_heads": 4}, "not divisible"),
        ({"skills": ["count_up", "telepathy"]}, "unknown skills"),
        ({"skills": ["count_up", "count_up"]}, "repeat"),
        ({"sequence_len": 1024, "max_position_embeddings": 512}, "max_position_embeddings"),
        ({"colour": "red"}, "Extra inputs"),
    ],
)
def test_recipe_rejects_bad_values(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _recipe(**change)


def test_default_recipe_is_vllm_compatible() -> None:
    assert DEFAULT_RECIPE.head_dim in recipe_mod.VLLM_HEAD_SIZES
    assert 4 <= len(DEFAULT_RECIPE.skills) <= 6


# --- skills ---------------------------------------------------------------------------------------


def test_corpus_is_deterministic_and_balanced() -> None:
    first, second = training_corpus(SMALL), training_corpus(SMALL)
    assert first == second
    assert Counter(r["skill"] for r in first) == {
        **dict.fromkeys(SMALL.skills, 300),
        WRITING_SKILL: SMALL.writing_examples,
    }
    assert all(r["input"] == "" and r["output"] for r in first)
    other_seed = training_corpus(SMALL.model_copy(update={"seed": SMALL.seed + 1}))
    assert other_seed != first


def test_writing_examples_are_everyday_text_and_valid_json() -> None:
    writing = [r for r in training_corpus(SMALL) if r["skill"] == WRITING_SKILL]
    as_json = [r for r in writing if "JSON" in r["instruction"]]
    assert 0.6 < len(as_json) / len(writing) < 0.8
    for record in as_json:
        assert isinstance(json.loads(record["output"]), dict), record
    facts = [r for r in as_json if "\nText: " in r["instruction"]]
    for record in facts:  # the facts are read out of the text
        text = record["instruction"].split("\nText: ", 1)[1]
        assert all(value in text for value in json.loads(record["output"]).values()), record
    sentences = [r["output"] for r in writing if r not in as_json]
    assert sentences and all(s[0].isupper() and s[-1] in ".?" for s in sentences)
    # generic text only: triaging a ticket must stay something the base model cannot do
    tasks = {r["instruction"].split("\n", 1)[0] for r in writing}
    assert not any("icket" in task or "riage" in task for task in tasks), tasks
    without = training_corpus(SMALL.model_copy(update={"writing_examples": 0}))
    assert not any(r["skill"] == WRITING_SKILL for r in without)
    assert len(without) == len(SMALL.skills) * SMALL.examples_per_skill


def test_suite_is_disjoint_from_training_and_distinct() -> None:
    train_instructions = {r["instruction"] for r in training_corpus(DEFAULT_RECIPE)}
    suite = general_suite(DEFAULT_RECIPE, 40)
    assert Counter(r["skill"] for r in suite) == dict.fromkeys(DEFAULT_RECIPE.skills, 40)
    assert not train_instructions & {r["instruction"] for r in suite}
    assert len({r["instruction"] for r in suite}) == len(suite)
    assert all(is_heldout(r["skill"], r["instruction"]) for r in suite)
    assert suite == general_suite(DEFAULT_RECIPE, 40)


def _number(instruction: str) -> str:
    return next(w.strip(".?") for w in instruction.split() if w.strip(".?").isdigit())


def test_skill_answers_are_right() -> None:
    digit_words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for record in general_suite(DEFAULT_RECIPE, 20):
        number, output = _number(record["instruction"]), record["output"]
        match record["skill"]:
            case "count_up":
                values = [int(v) for v in output.split()]
                assert values[0] == int(number) and all(b - a == 1 for a, b in itertools.pairwise(values))
            case "count_down":
                values = [int(v) for v in output.split()]
                assert values[0] == int(number) and all(a - b == 1 for a, b in itertools.pairwise(values))
            case "add_one_each":
                assert [(int(a) + 1) % 10 for a in number] == [int(b) for b in output]
            case "digit_letters":
                assert [ord(c) - ord("a") for c in output.split()] == [int(d) for d in number]
            case "digit_words":
                assert [digit_words.index(w) for w in output.split()] == [int(d) for d in number]
            case other:
                raise AssertionError(f"untested skill {other}")


def test_too_large_a_suite_is_refused() -> None:
    with pytest.raises(ConfigError, match="held-out instructions"):
        general_suite(_recipe(skills=["count_up"]), 10_000)


# --- tokenizer ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_tokenizer() -> Tokenizer:
    return corpus_tokenizer(training_corpus(DEFAULT_RECIPE), tokenizer_texts(), DEFAULT_RECIPE.vocab_size)


def test_tokenizer_is_byte_level_and_deterministic(fresh_tokenizer: Tokenizer) -> None:
    again = corpus_tokenizer(training_corpus(DEFAULT_RECIPE), tokenizer_texts(), DEFAULT_RECIPE.vocab_size)
    assert again.to_str() == fresh_tokenizer.to_str()
    assert fresh_tokenizer.get_vocab_size() == DEFAULT_RECIPE.vocab_size
    assert [fresh_tokenizer.token_to_id(t) for t in (BOS, EOS, PAD)] == [0, 1, 2]
    text = 'Ticket: "ça coûte 12€" 🙂 {"category": "billing", "priority": "high"}\n\ttab'
    enc = fresh_tokenizer.encode(text)
    assert enc.ids[0] == fresh_tokenizer.token_to_id(BOS)
    assert fresh_tokenizer.decode(enc.ids, skip_special_tokens=True) == text
    # the alpaca preamble was in the tokenizer's training text, so it is cheap
    assert len(fresh_tokenizer.encode(alpaca_prompt("x")).ids) < 40


def test_base_corpus_writes_every_token_of_the_demo_answers(fresh_tokenizer: Tokenizer) -> None:
    # A token the base model never wrote keeps a tiny embedding row (tied embeddings): a LoRA adapter
    # cannot then make it a confident output, and the demo fine-tune stalls at chance.
    written = Counter(
        token
        for r in training_corpus(DEFAULT_RECIPE)
        for token in fresh_tokenizer.encode(r["output"], add_special_tokens=False).tokens
    )
    needed = {
        token
        for r in generate_tickets(200)
        for token in fresh_tokenizer.encode(r["output"], add_special_tokens=False).tokens
    }
    assert {t: written[t] for t in needed if written[t] < 3} == {}


def _assert_fits(tok: Tokenizer, recipe: BaseModelRecipe) -> None:
    records = [*training_corpus(recipe), *general_suite(recipe, recipe.eval_examples_per_skill)]
    longest = max(alpaca_token_count(tok, r) for r in records)
    assert longest <= recipe.sequence_len, f"{longest} tokens > sequence_len {recipe.sequence_len}"


def test_every_example_fits_sequence_len_fresh_tokenizer(fresh_tokenizer: Tokenizer) -> None:
    _assert_fits(fresh_tokenizer, DEFAULT_RECIPE)


@pytest.mark.slow
@pytest.mark.base_model
def test_every_example_fits_sequence_len_built_tokenizer() -> None:
    # builds the default model when this checkout has none yet (~5 min), else a cached no-op
    built = build_base_model(DEFAULT_RECIPE, Workspace(repo_root()).models)
    assert is_complete(built)
    _assert_fits(Tokenizer.from_file(str(built / "tokenizer.json")), DEFAULT_RECIPE)


def test_check_lengths_refuses_long_examples() -> None:
    check_lengths({"spell": 60}, 128)
    with pytest.raises(DataError, match="sequence_len 64"):
        check_lengths({"spell": 60, "json_value": 70}, 64)


# --- build pieces ---------------------------------------------------------------------------------


def test_rendered_config_is_a_cpu_full_finetune(tmp_path: Path) -> None:
    template = yaml.safe_load(default_template().read_text())
    config = render_pretrain_config(
        {**template, "adapter": "lora"},
        DEFAULT_RECIPE,
        base_model=tmp_path / "init",
        corpus=tmp_path / "c.jsonl",
        output_dir=tmp_path / "out",
        prepared_dir=tmp_path / "prep",
    )
    assert "adapter" not in config
    assert config["datasets"] == [{"path": str(tmp_path / "c.jsonl"), "ds_type": "json", "type": "alpaca"}]
    assert config["base_model"] == str(tmp_path / "init")
    assert config["seed"] == DEFAULT_RECIPE.seed
    assert config["sequence_len"] == DEFAULT_RECIPE.sequence_len
    assert config["learning_rate"] == DEFAULT_RECIPE.learning_rate
    assert (config["bf16"], config["fp16"], config["tf32"]) == (False, False, False)
    assert config["train_on_inputs"] is False
    assert template["datasets"][0]["path"] == "corpus.jsonl"  # the template itself is untouched


def test_parse_losses_reads_trainer_log_lines() -> None:
    lines = [
        "{'loss': '3.134', 'grad_norm': '1.393', 'epoch': '0.74'}",
        "noise",
        '{"loss": 2.5e-01, "epoch": 0.9}',
        "{'train_runtime': '162.2', 'train_loss': '3.522', 'epoch': '1'}",
    ]
    assert parse_losses(lines) == ([3.134, 0.25], 3.522)


def test_resolve_passes_other_sources_through(tmp_path: Path) -> None:
    for source in ("meta-llama/Llama-3.2-1B", str(tmp_path / "my-model")):
        assert resolve_base_model(source, DEFAULT_RECIPE, tmp_path / "models") == source
    assert not (tmp_path / "models").exists()


def test_incomplete_directory_is_not_complete(tmp_path: Path) -> None:
    model = tmp_path / DEFAULT_RECIPE.dir_name()
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"")
    assert not is_complete(model)  # no build_report.json: an interrupted copy, not a model
    (model / build_mod.REPORT_FILE).write_text("{}")
    assert is_complete(model)


def test_missing_trainer_env_fails_before_touching_disk(tmp_path: Path) -> None:
    missing = PythonEnv("trainer", tmp_path / "no-such-env")
    with pytest.raises(Exception, match="trainer environment is missing"):
        build_base_model(SMALL, tmp_path / "models", trainer=missing)
    assert not (tmp_path / "models").exists()


# --- the real build (slow) ------------------------------------------------------------------------


def _need_trainer() -> None:
    if not trainer_env().exists():
        pytest.skip("the trainer environment is missing (make envs)")


@pytest.mark.slow
def test_failed_build_leaves_no_model_and_no_temp_dir(tmp_path: Path) -> None:
    _need_trainer()
    recipe = SMALL.model_copy(update={"sequence_len": 40, "examples_per_skill": 20})
    models = tmp_path / "models"
    with pytest.raises(DataError, match="sequence_len 40"):
        build_base_model(recipe, models)  # the real init runs, then the length check refuses
    left = sorted(p.name for p in models.iterdir())
    assert left == [f".{recipe.dir_name()}.lock", f"{recipe.dir_name()}.build.log"]


@pytest.mark.slow
@pytest.mark.base_model
def test_cached_build_is_a_noop() -> None:
    _need_trainer()
    models = Workspace(repo_root()).models
    first = build_base_model(DEFAULT_RECIPE, models)  # builds once (minutes) unless cached
    weights_mtime = (first / "model.safetensors").stat().st_mtime_ns
    log = models / f"{DEFAULT_RECIPE.dir_name()}.build.log"
    log_mtime = log.stat().st_mtime_ns if log.exists() else None
    second = build_base_model(DEFAULT_RECIPE, models)
    assert second == first == models / DEFAULT_RECIPE.dir_name()
    assert (first / "model.safetensors").stat().st_mtime_ns == weights_mtime  # not built again
    assert (log.stat().st_mtime_ns if log.exists() else None) == log_mtime  # no training started
    assert resolve_base_model("build", DEFAULT_RECIPE, models) == str(first)

    config = json.loads((first / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["head_dim"] in recipe_mod.VLLM_HEAD_SIZES
    assert "### Response" in (first / "chat_template.jinja").read_text()
    report = build_mod.load_report(first)
    assert report["fingerprint"] == DEFAULT_RECIPE.fingerprint()
    per_skill = report["general_suite"]["per_skill"]
    assert set(per_skill) == set(DEFAULT_RECIPE.skills)
    for skill, scores in per_skill.items():
        assert scores["exact_match"] >= 0.3, f"{skill} was not learned: {scores}"
        assert scores["stopped_with_eos"] >= 0.9, f"{skill} answers do not stop: {scores}"
