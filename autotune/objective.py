"""What a tuning run minimizes, and which trials count as acceptable.

    accuracy   minimize the loss itself (see evaluate.py for the loss definitions)
    size       minimize the QDQ model's bytes          subject to loss <= max_loss
    latency    minimize the median batch-1 latency     subject to loss <= max_loss
A trial that failed (the config could not be compiled) has loss = objective = inf.
Trials are ordered feasible first, by objective, then infeasible by loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

OBJECTIVES = ("accuracy", "size", "latency")


@dataclass(frozen=True)
class Goal:
    objective: str = "accuracy"
    max_loss: float = math.inf

    def value(self, metrics: dict) -> float:
        if metrics.get("error"):
            return math.inf
        if self.objective == "accuracy":
            return float(metrics["loss"])
        if self.objective == "size":
            return float(metrics["size_bytes"])
        return float(metrics["latency_ms"])

    def loss(self, metrics: dict) -> float:
        return math.inf if metrics.get("error") else float(metrics["loss"])

    def feasible(self, metrics: dict) -> bool:
        return self.loss(metrics) <= self.max_loss

    def rank_key(self, loss: float, value: float) -> tuple:
        feasible = loss <= self.max_loss
        return (0, value, loss) if feasible else (1, loss, value)

    @property
    def constrained(self) -> bool:
        return self.objective != "accuracy"
