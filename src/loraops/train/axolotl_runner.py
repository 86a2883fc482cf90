"""Runs Axolotl in the trainer environment (the only side effect of the training stage)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from loraops.envs import PythonEnv, require, run_streaming, trainer_env

log = logging.getLogger(__name__)

# On CPU, one process is what we want; accelerate adds start-up time and nothing else.
# On a GPU host `launcher` comes from params (accelerate / torchrun for several GPUs).
DEFAULT_LAUNCHER = "python"


def cpu_thread_env(threads: int | None) -> dict[str, str]:
    """OpenMP/MKL thread count for a CPU run; empty (library default) when ``threads`` is None."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}


def run_axolotl_train(
    config_path: Path,
    *,
    log_file: Path,
    launcher: str = DEFAULT_LAUNCHER,
    env: PythonEnv | None = None,
    on_line: Callable[[str], None] | None = None,
    extra_env: dict[str, str] | None = None,
    cpu_threads: int | None = None,
    launcher_extra: list[str] | None = None,
) -> None:
    """``axolotl train CONFIG`` with offline settings; raises StageError with the log path on failure.

    ``launcher_extra`` goes to the launcher after ``--`` (accelerate's --num_machines and the like)."""
    trainer = require(env or trainer_env())
    environ = trainer.environ({**(extra_env or {}), **cpu_thread_env(cpu_threads)})
    environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    run_streaming(
        [
            trainer.bin / "axolotl",
            "train",
            config_path,
            "--launcher",
            launcher,
            *(["--", *launcher_extra] if launcher_extra else []),
        ],
        env=environ,
        cwd=config_path.parent,
        log_file=log_file,
        on_line=on_line,
        what=f"axolotl train {config_path.name}",
    )
