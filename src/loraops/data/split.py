"""Deterministic train/val/test split and review sample, by a stable hash of the normalised input.

An example's split depends on its normalised input and the salt only: duplicates and near-duplicates
(same normalised input) land in the same split, and appending data never moves an old example.
"""

from __future__ import annotations

from typing import Literal

from loraops.data.params import ReviewParams, SplitParams
from loraops.data.records import key64

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
_SCALE = float(1 << 64)


def unit(normalised_input: str, salt: str) -> float:
    """A number in [0, 1) fixed by the text and the salt."""
    return key64(normalised_input, salt) / _SCALE


def assign_split(normalised_input: str, params: SplitParams) -> Split:
    u = unit(normalised_input, "split:" + params.salt)
    if u < params.test_fraction:
        return "test"
    if u < params.test_fraction + params.val_fraction:
        return "val"
    return "train"


def review_fraction(total: int, params: ReviewParams) -> float:
    """Share of examples to sample: all of a small dataset, else ``fraction`` (bounded by max_examples)."""
    if total < params.all_below:
        share = 1.0
    else:
        share = params.fraction
    if params.max_examples is not None and total:
        share = min(share, params.max_examples / total)
    return share


def in_review(normalised_input: str, share: float, params: ReviewParams) -> bool:
    return share >= 1.0 or unit(normalised_input, "review:" + params.salt) < share
