"""Early stopping at the coordinator on the example-weighted VALIDATION metric the sites report
(`val_<metric>`; never the test split), with patience and a minimum improvement. The best
round's adapter is kept as the run's result."""

from __future__ import annotations

from flwr.app import ArrayRecord

LOWER_IS_BETTER = ("loss", "rmse", "mae")


class EarlyStopping:
    def __init__(self, *, patience: int, min_delta: float, metric: str):
        self.patience, self.min_delta, self.metric = patience, min_delta, metric
        self.best_value: float | None = None
        self.best_round = 0
        self.bad_rounds = 0
        self.stopped = False
        self._best_arrays: ArrayRecord | None = None

    @property
    def enabled(self) -> bool:
        return self.patience > 0

    def _better(self, value: float) -> bool:
        if self.best_value is None:
            return True
        if self.metric in LOWER_IS_BETTER:
            return value < self.best_value - self.min_delta
        return value > self.best_value + self.min_delta

    def update(self, server_round: int, row: dict, arrays: ArrayRecord) -> None:
        """Look at one round's weighted metrics; keep the arrays when they are the best so far."""
        if not self.enabled:
            return
        value = row.get("evaluate", {}).get(f"val_{self.metric}")
        if value is None:
            return  # no evaluation this round
        if self._better(value):
            self.best_value, self.best_round, self.bad_rounds = float(value), server_round, 0
            self._best_arrays = ArrayRecord(arrays.to_torch_state_dict())
        else:
            self.bad_rounds += 1
            self.stopped = self.bad_rounds >= self.patience

    def best_arrays(self, last: ArrayRecord) -> ArrayRecord:
        return self._best_arrays if (self.enabled and self._best_arrays is not None) else last

    def state(self) -> dict:
        return {"enabled": self.enabled, "metric": self.metric, "best_value": self.best_value,
                "best_round": self.best_round, "bad_rounds": self.bad_rounds, "stopped": self.stopped}

    def best_tensors(self) -> dict | None:
        return self._best_arrays.to_torch_state_dict() if self._best_arrays is not None else None

    def load(self, state: dict, best_tensors: dict | None = None) -> None:
        if not state:
            return
        self.best_value, self.best_round = state.get("best_value"), state.get("best_round", 0)
        self.bad_rounds, self.stopped = state.get("bad_rounds", 0), state.get("stopped", False)
        if best_tensors:
            self._best_arrays = ArrayRecord(best_tensors)
