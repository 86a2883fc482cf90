"""What a training run cost (pure): the number every run records next to its scores."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class RunCost:
    """Cost in USD of one run, with the basis it was computed on."""

    usd: float
    billable_s: float  # per instance
    instances: int
    usd_per_hour: float  # per instance, on demand
    on_demand_usd: float  # the same run without spot
    spot_saving: float  # share of on_demand_usd saved by spot (0 without spot)
    basis: str

    def as_metrics(self) -> dict[str, float]:
        return {
            "cost.usd": self.usd,
            "cost.billable_s": self.billable_s,
            "cost.on_demand_usd": self.on_demand_usd,
            "cost.spot_saving": self.spot_saving,
        }

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        saving = f", {self.spot_saving:.0%} saved by spot" if self.spot_saving > 0 else ""
        return f"${self.usd:.4f} ({self.basis}{saving})"


def local_cost(wall_s: float, usd_per_hour: float) -> RunCost:
    """This machine: wall time x ``train.local_usd_per_hour``."""
    usd = wall_s / 3600 * usd_per_hour
    return RunCost(usd, wall_s, 1, usd_per_hour, usd, 0.0, f"{wall_s:.0f} s x ${usd_per_hour}/h")


def sagemaker_cost(
    *, billable_s: float, training_s: float, instance_type: str, instances: int, usd_per_hour: float
) -> RunCost:
    """SageMaker bills BillableTimeInSeconds per instance; with managed spot that is less than the
    training time, and the difference is the spot saving (as the SageMaker console computes it)."""
    usd = billable_s * instances / 3600 * usd_per_hour
    on_demand = max(training_s, billable_s) * instances / 3600 * usd_per_hour
    saving = 1 - billable_s / training_s if training_s > 0 and billable_s < training_s else 0.0
    basis = f"{billable_s:.0f} billable s x {instances} x {instance_type} ${usd_per_hour}/h"
    return RunCost(usd, billable_s, instances, usd_per_hour, on_demand, saving, basis)
