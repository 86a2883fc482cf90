"""The Axolotl plugin loraops adds to every run it renders: corrections to the pinned Axolotl stack.

1. Training starts from the run's seed. Axolotl 0.19.0 seeds torch only where transformers' Trainer is
built (``set_seed`` in ``Trainer.__init__``), which is after PEFT has created the adapter: ``lora_A`` was
initialised from the process's unseeded RNG, so two runs of the same recipe on the same data started
from different weights (their adapters ended 141% apart, relative norm). Seeding before the model and
the adapter are made gives the same adapter for the same data + params + seed. Drop this when Axolotl
seeds before loading.

2. The prepared dataset is saved in-process. Axolotl always passes ``num_proc >= 1`` to datasets'
``save_to_disk``, and datasets 4.8 then writes through a *spawn* pool with a manager process: two fresh
interpreters that import Axolotl's whole CLI again, 20-30 s per split on 2 cores for a few hundred
examples. With one process there is nothing to parallelise, so ``num_proc=1`` writes in the calling
process (the same single shard). Drop this when datasets skips the pool for one process.

Loaded by Axolotl in the trainer environment (``plugins:`` of the rendered config), never by loraops.
"""

from __future__ import annotations

from typing import Any

from axolotl.integrations.base import BasePlugin

DEFAULT_SEED = 42


def _seed(cfg: Any) -> None:
    from transformers import set_seed

    set_seed(int(cfg.seed) if cfg.seed is not None else DEFAULT_SEED)


def _save_single_process_in_place() -> None:
    from datasets import Dataset

    original = Dataset.save_to_disk
    if getattr(original, "__loraops__", False):
        return

    def save_to_disk(self: Any, dataset_path: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("num_proc") == 1:
            kwargs["num_proc"] = None  # same single shard, no spawn pool
        return original(self, dataset_path, *args, **kwargs)

    save_to_disk.__loraops__ = True  # type: ignore[attr-defined]
    Dataset.save_to_disk = save_to_disk


class SeededStart(BasePlugin):
    """Seeds python, numpy and torch before the model is loaded and before the adapter is created; saves
    a prepared dataset without a process pool when one process is asked for."""

    def register(self, cfg: Any) -> None:
        _save_single_process_in_place()

    def pre_model_load(self, cfg: Any) -> None:
        _seed(cfg)

    def pre_lora_load(self, cfg: Any, model: Any) -> None:
        _seed(cfg)
