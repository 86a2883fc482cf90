"""Uncertainty of evaluation scores (pure): bootstrap intervals of means and of paired differences.

Method: the bias-corrected and accelerated (BCa) bootstrap over examples, as scipy.stats.bootstrap
computes it. The n per-example values are resampled with replacement ``resamples`` times with a fixed
seed (so the same scores always give the same interval) and the mean of each resample is taken; BCa
then corrects the percentiles for the bias and skew of those means, which matters here: per-example
scores are 0/1 and often near 0 or 1 (a plain percentile interval let through 6.7% instead of 2.5%
of candidates that forgot exactly the allowed amount, in the simulation below). A *paired* difference
resamples the same examples for both models, so the interval reflects how differently the two models
did on the same examples, not how hard the examples were: two models that agree on every example have
a zero-width interval around 0.

The gate (gate/decision.py) judges an improvement on the lower bound of a paired difference and a
drop (forgetting) on its upper bound, so a check passes only when the data rule out the bad case at
(1+level)/2 one-sided confidence. ``tests/test_gate_simulation.py`` measures the false-pass and
false-fail rates this gives at the configured sample size.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95
DEFAULT_SEED = 20261127


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap interval, over ``n`` examples."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, float | int]) -> Estimate:
        return cls(float(data["mean"]), float(data["low"]), float(data["high"]), int(data["n"]))


def bootstrap_mean(
    values: Sequence[float],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = DEFAULT_SEED,
) -> Estimate:
    """The mean of ``values`` with its percentile bootstrap interval."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return Estimate(0.0, 0.0, 0.0, 0)
    mean = float(data.mean())
    if np.all(data == data[0]):  # no spread: BCa is undefined and the interval is the point itself
        return Estimate(mean, mean, mean, int(data.size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy warns on near-degenerate jackknife samples
        result = stats.bootstrap(
            (data,),
            np.mean,
            n_resamples=resamples,
            confidence_level=level,
            method="BCa",
            vectorized=True,
            random_state=np.random.default_rng(seed),
        )
    low, high = result.confidence_interval.low, result.confidence_interval.high
    if not (np.isfinite(low) and np.isfinite(high)):
        low, high = np.quantile(result.bootstrap_distribution, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(mean, float(min(low, mean)), float(max(high, mean)), int(data.size))


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = DEFAULT_SEED,
) -> Estimate:
    """mean(a - b) over the same examples, with the interval of the paired bootstrap."""
    if len(a) != len(b):
        raise ValueError(f"a paired difference needs the same examples: {len(a)} vs {len(b)} values")
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return bootstrap_mean(diff.tolist(), resamples=resamples, level=level, seed=seed)
