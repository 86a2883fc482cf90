"""Deterministic train/val/test split and review sample, by a stable hash of the normalised input.

An example's split depends on its normalised input and the salt only: duplicates and near-duplicates
(same normalised input) land in the same split, and appending data never moves an old example.
"""

from __future__ import annotations

from typing import Literal

from loraops.data.params import ReviewParams, SplitParams
from loraops.data.records import Hasher

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
_SCALE = float(1 << 64)


class Splitter:
    """Assigns a split to a normalised input. Build once per run (the salted hasher is reused)."""

    def __init__(self, params: SplitParams) -> None:
        self._hash = Hasher("split:" + params.salt)
        self._test = params.test_fraction
        self._val_end = params.test_fraction + params.val_fraction

    def __call__(self, normalised_input: str) -> Split:
        u = self._hash(normalised_input) / _SCALE
        if u < self._test:
            return "test"
        if u < self._val_end:
            return "val"
        return "train"


def assign_split(normalised_input: str, params: SplitParams) -> Split:
    return Splitter(params)(normalised_input)


def review_fraction(total: int, params: ReviewParams) -> float:
    """Share of examples to sample: all of a small dataset, else ``fraction`` (bounded by max_examples)."""
    share = 1.0 if total < params.all_below else params.fraction
    if params.max_examples is not None and total:
        share = min(share, params.max_examples / total)
    return share


def review_key(params: ReviewParams) -> Hasher:
    """Hash of the normalised input for review sampling: in the sample when ``key / 2**64 < share``."""
    return Hasher("review:" + params.salt)


def in_review(key: int, share: float) -> bool:
    return share >= 1.0 or key / _SCALE < share
