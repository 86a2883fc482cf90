"""The Axolotl plugin loraops adds to every run it renders: training starts from the run's seed.

Axolotl 0.19.0 seeds torch only where transformers' Trainer is built (``set_seed`` in
``Trainer.__init__``), which is after PEFT has created the adapter: ``lora_A`` was initialised from the
process's unseeded RNG, so two runs of the same recipe on the same data started from different weights
(their adapters ended 141% apart, relative norm). Seeding before the model and the adapter are made
gives the same adapter for the same data + params + seed. Drop this when Axolotl seeds before loading.

Loaded by Axolotl in the trainer environment (``plugins:`` of the rendered config), never by loraops.
"""

from __future__ import annotations

from typing import Any

from axolotl.integrations.base import BasePlugin

DEFAULT_SEED = 42


def _seed(cfg: Any) -> None:
    from transformers import set_seed

    set_seed(int(cfg.seed) if cfg.seed is not None else DEFAULT_SEED)


class SeededStart(BasePlugin):
    """Seeds python, numpy and torch before the model is loaded and before the adapter is created."""

    def pre_model_load(self, cfg: Any) -> None:
        _seed(cfg)

    def pre_lora_load(self, cfg: Any, model: Any) -> None:
        _seed(cfg)
