"""What the adapter costs against the RAG baseline, and when its training pays for itself (pure).

Inference: the tokens each request really used on the test set (the server's usage report), priced
per million prompt and completion tokens. RAG puts retrieved examples into every prompt, so its
requests are longer; the adapter answers the bare question. The training cost comes from the run
(local wall time x $/h, or SageMaker's billable seconds x the instance price). Break-even: the day on
which the accumulated savings per request x requests per day exceed the training cost.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from pydantic import BaseModel, ConfigDict, Field


class CostParams(BaseModel):
    """params.yaml `cost:` prices and traffic for the break-even analysis."""

    model_config = ConfigDict(extra="forbid")

    usd_per_1m_prompt_tokens: float = Field(0.15, ge=0, description="Price of a million prompt tokens.")
    usd_per_1m_completion_tokens: float = Field(
        0.60, ge=0, description="Price of a million generated tokens."
    )
    requests_per_day: int = Field(10_000, ge=0, description="Expected traffic on the stable name.")


@dataclass(frozen=True)
class BreakEven:
    training_usd: float
    adapter_per_1k_usd: float
    rag_per_1k_usd: float
    adapter_prompt_tokens: float
    rag_prompt_tokens: float
    requests_per_day: int
    days: float  # inf when the adapter saves nothing per request

    @property
    def saving_per_day_usd(self) -> float:
        return (self.rag_per_1k_usd - self.adapter_per_1k_usd) / 1000 * self.requests_per_day

    def payback(self) -> str:
        """When the training cost is recovered: "at once", "after 3.2 hours", or "never"."""
        if math.isinf(self.days):
            return "never"
        return "at once" if self.days == 0 else f"after {_duration(self.days)}"

    def statement(self) -> str:
        """The break-even in one sentence, as the report states it."""
        adapter, rag = f"${self.adapter_per_1k_usd:.4f}", f"${self.rag_per_1k_usd:.4f}"
        prices = f"the adapter costs {adapter} per 1k requests, RAG {rag}"
        if math.isinf(self.days):
            return f"{prices}: no inference saving, so cheaper requests never recover the training cost"
        when = self.payback()
        tokens = f"{self.rag_prompt_tokens:.0f} vs {self.adapter_prompt_tokens:.0f} prompt tokens"
        saving = f"${self.saving_per_day_usd:.2f}/day at {self.requests_per_day:,} requests/day"
        training = f"${self.training_usd:.2f}" if self.training_usd >= 1 else f"${self.training_usd:.4f}"
        return f"{prices} ({tokens}); it saves {saving} and recovers the {training} training cost {when}"

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)


def _duration(days: float) -> str:
    if days >= 1:
        return f"{days:.1f} days"
    hours = days * 24
    return f"{hours:.1f} hours" if hours >= 1 else f"{hours * 60:.0f} minutes"


def per_1k_usd(prompt_tokens: float, completion_tokens: float, prices: CostParams) -> float:
    return (
        1000
        * (
            prompt_tokens * prices.usd_per_1m_prompt_tokens
            + completion_tokens * prices.usd_per_1m_completion_tokens
        )
        / 1_000_000
    )


def break_even(
    *,
    training_usd: float,
    adapter_tokens: tuple[float, float],
    rag_tokens: tuple[float, float],
    prices: CostParams,
) -> BreakEven:
    """``*_tokens``: mean (prompt, completion) tokens per request of each approach on the same examples."""
    adapter = per_1k_usd(*adapter_tokens, prices)
    rag = per_1k_usd(*rag_tokens, prices)
    saving_per_day = (rag - adapter) / 1000 * prices.requests_per_day
    days = training_usd / saving_per_day if saving_per_day > 0 else math.inf
    return BreakEven(
        training_usd, adapter, rag, adapter_tokens[0], rag_tokens[0], prices.requests_per_day, days
    )
