"""What a training run leaves on disk: Axolotl checkpoints (for resume) and the adapter (safetensors only).

Shared by the local launcher and the in-job entry point of SageMaker, which both run Axolotl with its
``output_dir`` holding ``checkpoint-<step>`` directories and, at the end, the adapter files.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from loraops.errors import StageError

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
PICKLE_WEIGHTS = ("adapter_model.bin", "adapter_model.pt", "pytorch_model.bin")
# The Hugging Face Trainer writes trainer_state.json last when it saves a checkpoint, so a checkpoint
# directory without it was cut short (the process died while saving).
CHECKPOINT_DONE_FILE = "trainer_state.json"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int


def checkpoints(output_dir: Path) -> list[Checkpoint]:
    """Complete ``checkpoint-<step>`` directories of ``output_dir``, oldest first."""
    found = []
    for path in output_dir.glob("checkpoint-*") if output_dir.is_dir() else []:
        suffix = path.name.removeprefix("checkpoint-")
        if path.is_dir() and suffix.isdigit() and (path / CHECKPOINT_DONE_FILE).is_file():
            found.append(Checkpoint(path, int(suffix)))
    return sorted(found, key=lambda c: c.step)


def drop_incomplete_checkpoints(output_dir: Path) -> list[Path]:
    """Remove checkpoint directories a killed process left half-written (Axolotl would resume from the
    newest one, complete or not). Returns what was removed."""
    removed = []
    for path in output_dir.glob("checkpoint-*") if output_dir.is_dir() else []:
        if path.is_dir() and not (path / CHECKPOINT_DONE_FILE).is_file():
            shutil.rmtree(path)
            removed.append(path)
    return removed


def last_checkpoint(output_dir: Path) -> Checkpoint | None:
    found = checkpoints(output_dir)
    return found[-1] if found else None


def checkpoint_progress(checkpoint: Checkpoint) -> tuple[int, int | None]:
    """(global step, max steps) recorded in a checkpoint's trainer state."""
    try:
        state = json.loads((checkpoint.path / CHECKPOINT_DONE_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return checkpoint.step, None
    return int(state.get("global_step", checkpoint.step)), state.get("max_steps")


def refuse_pickles(directory: Path, what: str) -> None:
    """A pickled weights file can run code when loaded: loraops keeps and serves safetensors only."""
    pickles = (
        sorted(p.name for p in directory.iterdir() if p.name in PICKLE_WEIGHTS) if directory.is_dir() else []
    )
    if pickles:
        raise StageError(
            f"{what} {directory} holds {', '.join(pickles)}: pickled weights, which can run code when "
            "loaded; loraops accepts adapters saved as safetensors only",
            hint="train with save_safetensors: true (loraops sets it) or convert the adapter with "
            "peft's save_pretrained(safe_serialization=True)",
        )


def collect_adapter(output_dir: Path, dest: Path, *, log_hint: str) -> Path:
    """Copy the adapter Axolotl wrote in ``output_dir`` to ``dest`` (config + safetensors + README)."""
    refuse_pickles(output_dir, "the training output")
    missing = [f for f in ADAPTER_FILES if not (output_dir / f).exists()]
    if missing:
        raise StageError(
            f"Axolotl finished but the adapter is incomplete (missing {', '.join(missing)} in {output_dir})",
            hint=log_hint,
        )
    dest.mkdir(parents=True, exist_ok=True)
    for name in (*ADAPTER_FILES, "README.md"):
        if (output_dir / name).exists():
            shutil.copy2(output_dir / name, dest / name)
    return dest
