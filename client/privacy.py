"""A site's privacy ledger: one per dataset (keyed by the prepared train split's fingerprint), on
the site's own disk, never at the coordinator. It records every round's (noise multiplier, sample
rate, steps), so epsilon is computed by Opacus' accountant over the dataset's WHOLE history —
across rounds, runs and process restarts — and a round that would pass the budget is refused
before any training happens."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common.errors import PrivacyBudgetExceeded

ACCOUNTANTS = ("rdp", "prv")
MAX_NOISE = 16.0  # beyond this a step carries almost no signal: refuse instead of training on noise


def compute_epsilon(history: list[tuple[float, float, int]], *, delta: float,
                    accountant: str) -> float:
    """Epsilon of a history of (noise multiplier, sample rate, steps) with Opacus' accountant."""
    if not history:
        return 0.0
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = [(float(s), float(q), int(k)) for s, q, k in history]
    return float(acc.get_epsilon(delta=delta))


def calibrate_noise(history: list[tuple[float, float, int]], *, sample_rate: float, steps: int,
                    target_epsilon: float, delta: float, accountant: str) -> float:
    """Smallest noise multiplier such that `history` plus `steps` more steps at `sample_rate`
    stays within `target_epsilon` (bisection on the accountant; ~1 s)."""
    def eps(sigma: float) -> float:
        return compute_epsilon(history + [(sigma, sample_rate, steps)], delta=delta,
                               accountant=accountant)

    lo, hi = 0.3, 2.0
    while eps(hi) > target_epsilon:
        hi *= 2
        if hi > MAX_NOISE:
            raise PrivacyBudgetExceeded(
                f"privacy budget exhausted: keeping epsilon <= {target_epsilon:.3f} for {steps} more "
                f"steps at sample rate {sample_rate:.4f} needs a noise multiplier above {MAX_NOISE}"
                f" (pure noise): the site refuses; raise its budget or train fewer rounds")
    if eps(lo) <= target_epsilon:
        return lo
    for _ in range(30):
        mid = (lo + hi) / 2
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-3:
            break
    return hi


@dataclass
class Plan:
    """This run's DP parameters at this site, fixed at its first round."""

    noise_multiplier: float
    sample_rate: float
    planned_steps: int
    target_epsilon: float


class PrivacyLedger:
    """`site_dir/ledger/<dataset fingerprint>.json`, rewritten atomically after every round."""

    def __init__(self, site_dir: str | Path, *, dataset: str, num_examples: int, delta: float,
                 budget: float, accountant: str):
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"privacy.accountant = {accountant!r}: use rdp or prv")
        self.path = Path(site_dir) / "ledger" / f"{dataset[:24]}.json"
        self.budget = budget
        self.accountant = accountant
        if self.path.is_file():
            self.data = json.loads(self.path.read_text(encoding="utf-8"))
            if self.data["dataset"] != dataset:
                raise PrivacyBudgetExceeded(f"ledger {self.path} belongs to another dataset")
        else:
            self.data = {"version": 1, "dataset": dataset, "num_examples": num_examples,
                         "delta": delta, "created": time.time(), "entries": [], "plans": {}}

    @property
    def delta(self) -> float:  # fixed for the dataset's life: epsilons are only comparable at one delta
        return float(self.data["delta"])

    @property
    def history(self) -> list[tuple[float, float, int]]:
        return [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in self.data["entries"]]

    def spent(self) -> float:
        return compute_epsilon(self.history, delta=self.delta, accountant=self.accountant)

    def plan(self, run: str, *, sample_rate: float, planned_steps: int,
             run_epsilon: float) -> Plan:
        """The run's noise multiplier, calibrated once to ALL its planned steps at this site, so
        that (history + this run) reaches min(budget, spent + run_epsilon)."""
        if run in self.data["plans"]:
            return Plan(**self.data["plans"][run])
        spent = self.spent()
        target = min(self.budget, spent + run_epsilon)
        if target <= spent + 1e-9:
            raise PrivacyBudgetExceeded(
                f"privacy budget exhausted: epsilon spent {spent:.3f} of {self.budget:.3f} on this "
                f"dataset (ledger {self.path}); the site refuses to train")
        sigma = calibrate_noise(self.history, sample_rate=sample_rate, steps=planned_steps,
                                target_epsilon=target, delta=self.delta, accountant=self.accountant)
        plan = Plan(noise_multiplier=sigma, sample_rate=sample_rate, planned_steps=planned_steps,
                    target_epsilon=target)
        self.data["plans"][run] = plan.__dict__
        self._write()
        return plan

    def check(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Epsilon after the planned round; raises PrivacyBudgetExceeded (no training happens)
        when it would pass the budget."""
        after = compute_epsilon(self.history + [(noise_multiplier, sample_rate, steps)],
                                delta=self.delta, accountant=self.accountant)
        if after > self.budget + 1e-6:
            raise PrivacyBudgetExceeded(
                f"round refused: it would raise epsilon from {self.spent():.3f} to {after:.3f}, over "
                f"the site's budget {self.budget:.3f} (delta {self.delta:.2e}, ledger {self.path})")
        return after

    def record(self, *, run: str, server_round: int, noise_multiplier: float, sample_rate: float,
               steps: int) -> float:
        """Append one round and persist; returns epsilon spent after it."""
        self.data["entries"].append({"run": run, "round": server_round, "time": time.time(),
                                     "noise_multiplier": noise_multiplier,
                                     "sample_rate": sample_rate, "steps": steps,
                                     "accountant": self.accountant, "budget": self.budget})
        eps = self.spent()
        self.data["entries"][-1]["epsilon"] = eps
        self._write()
        return eps

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".ledger.", dir=self.path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.data, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def describe(self) -> str:
        lines = [f"ledger {self.path}", f"dataset {self.data['dataset'][:16]}…  n={self.data['num_examples']}"
                 f"  delta={self.delta:.2e}  accountant={self.accountant}  budget={self.budget}",
                 f"{'run':>20} {'round':>5} {'sigma':>7} {'q':>8} {'steps':>6} {'epsilon':>8}"]
        for e in self.data["entries"]:
            lines.append(f"{str(e['run'])[-20:]:>20} {e['round']:>5} {e['noise_multiplier']:7.3f} "
                         f"{e['sample_rate']:8.5f} {e['steps']:6d} {e.get('epsilon', float('nan')):8.3f}")
        lines.append(f"spent epsilon {self.spent():.4f} of budget {self.budget}")
        return "\n".join(lines)


def default_delta(n: int) -> float:
    """Below 1/n, as DP practice requires: 1 / (10 n)."""
    return 1.0 / (10 * max(1, n))
