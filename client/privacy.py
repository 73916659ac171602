"""A site's privacy ledger: ONE per site dataset lineage (client/ledger.py), on the site's own disk,
never at the coordinator. It records every run's plan and every round's (noise multiplier,
sample rate, steps), so epsilon is computed by Opacus' accountant over the lineage's WHOLE
history — across rounds, runs, setting changes, appended rows and process restarts — and a round
that would pass the run's plan or the site's budget is refused before any training happens.

What the coordinator can no longer decide: the budget (the site's `privacy-budget`, else the one
fixed when the lineage was created), delta (the site's: min(max-delta, 1/(10 n)) fixed at
creation, always below 1/n), the accountant (fixed at creation), how many rounds a run trains
(its plan, fixed at its first round: each round number once, no retries of a trained round),
how often a run's arrays are evaluated (once per planned round and split), and the DP noise
(from the OS CSPRNG, never from train.seed)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from client.accounting import (ACCOUNTANTS, calibrate_noise, compute_epsilon, default_delta,  # noqa: F401
                               secure_rng, secure_seed, server_round_of)
from client.ledger import Journal, read_format1
from client.policy import PolicyViolation
from common.errors import PrivacyBudgetExceeded, reason

TOL = 1e-6


@dataclass
class Plan:
    """One run's DP parameters at this site, fixed (in the journal) at its first round."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    rounds: int
    run_epsilon: float
    target_epsilon: float
    unit: str = "record"  # the privacy unit: "record", or "person" (client/dp_units.py)

    @property
    def planned_steps(self) -> int:
        return self.steps_per_round * self.rounds


def _refuse(text: str, public: str) -> PolicyViolation:
    return PolicyViolation(text, public=reason(public))


class PrivacyLedger:
    """The lineage's accounting. Mutating calls take the site's ledger lock themselves; wrap a
    whole round in `with ledger.locked():` so plan -> check -> train -> record is one critical
    section across processes."""

    def __init__(self, site_dir: str | Path, *, site: str, source: str, num_examples: int,
                 budget: float = 0.0, run_budget: float = 0.0, accountant: str = "rdp",
                 max_delta: float | None = None, run_delta: float = 0.0, dataset: str = ""):
        """`budget`: the site's own lifetime cap (0 = none set); `run_budget`: the run's, used only
        to fix the cap when a lineage is created at a site that set none. `run_delta` (the run's
        privacy.delta, 0 = none) can only make a new lineage's delta SMALLER, never larger."""
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"privacy.accountant = {accountant!r}: use rdp or prv")
        self.journal = Journal(site_dir)
        self.path = self.journal.path
        self.site, self.source, self.n, self.dataset = site, str(source), int(num_examples), dataset
        self._budget, self._run_budget = float(budget or 0.0), float(run_budget or 0.0)
        self._accountant, self._max_delta, self._run_delta = accountant, max_delta, float(run_delta or 0)
        with self.journal.locked():
            pass  # load + verify now: a damaged ledger refuses before any work

    def locked(self):
        return self.journal.locked()

    # -- the lineage ------------------------------------------------------------------------
    @property
    def lineage(self) -> dict[str, Any]:
        if not self.journal.entries:
            return {}
        return self.journal.entries[0]

    def _ensure(self) -> None:
        """Create the lineage on first use (importing old per-fingerprint JSON ledgers), and check
        this site and data file are the ones it is bound to."""
        j = self.journal
        if j.marker is None:
            delta = min(default_delta(self.n), self._max_delta or 1.0, self._run_delta or 1.0)
            imported = [e for old in sorted((j.site_dir / "ledger").glob("*.json"))  # format 1
                        for e in read_format1(old)]
            # old per-fingerprint ledgers are imported IN the first entry: one write, never lost
            j.create(site=self.site, source=self.source,
                     extra={"delta": delta, "accountant": self._accountant,
                            "budget": self._budget or self._run_budget,
                            "num_examples": self.n, "imported": imported})
        lin = self.lineage
        if (lin["site"], lin["source"]) != (self.site, self.source):
            raise _refuse(f"privacy ledger {self.path} belongs to site {lin['site']!r} with data "
                          f"{lin['source']}, not {self.site!r} with {self.source}: use that site's own "
                          "site dir, or start over with `fedtune ledger reset --site-dir DIR --reason ...`",
                          "refused: the site's privacy ledger belongs to another data source")
        if not self.delta < 1.0 / max(1, self.n):
            raise _refuse(f"the lineage's delta {self.delta:g} is not below 1/n for {self.n} training rows "
                          f"(ledger {self.path}): the site has lost data; reset the ledger explicitly",
                          "refused by site rule delta-below-one-over-n: the site's data shrank")

    def fixed_delta(self) -> float:
        """The lineage's delta, creating the lineage first when this is its first use (what a
        run's planning will account at, known before the plan)."""
        with self.locked():
            self._ensure()
            return self.delta

    @property
    def delta(self) -> float:  # fixed for the lineage's life: epsilons are comparable at one delta
        return float(self.lineage.get("delta", default_delta(self.n)))

    @property
    def accountant(self) -> str:
        return str(self.lineage.get("accountant", self._accountant))

    @property
    def budget(self) -> float:
        """The site's own cap when it set one; else the one fixed when the lineage was created."""
        return self._budget or float(self.lineage.get("budget", self._run_budget))

    def _current(self) -> list[dict[str, Any]]:
        """Entries since the last explicit reset."""
        entries = self.journal.entries
        last = max((i for i, e in enumerate(entries) if e["kind"] == "reset"), default=-1)
        return entries[last + 1:]

    def _steps(self, *, skip_run: str | None = None) -> list[tuple[float, float, int]]:
        """(noise, q, steps) of every imported and trained round since the last reset."""
        current = self._current()
        rounds = [i for e in current if e["kind"] == "lineage" for i in e.get("imported", [])]
        rounds += [e for e in current if e["kind"] == "round" and e["run"] != skip_run]
        return [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in rounds]

    @property
    def history(self) -> list[tuple[float, float, int]]:
        return self._steps()

    def spent(self) -> float:
        return compute_epsilon(self.history, delta=self.delta, accountant=self.accountant)

    def _plan_of(self, run: str) -> Plan | None:
        plans = [e for e in self._current() if e["kind"] == "plan" and e["run"] == run]
        return Plan(**{k: plans[-1][k] for k in Plan.__dataclass_fields__ if k in plans[-1]}) if plans else None

    def unit(self) -> str:
        """The unit the lineage's epsilon protects: "person" only when every round since the
        last reset was person-level (a record-level round bounds a person only by group
        privacy); "record" otherwise."""
        rounds = [e for e in self._current() if e["kind"] == "round"]
        imported = any(e.get("imported") for e in self._current() if e["kind"] == "lineage")
        if rounds and not imported and all(e.get("unit") == "person" for e in rounds):
            return "person"
        return "record"

    def _rounds_of(self, run: str) -> list[int]:
        return [e["round"] for e in self._current() if e["kind"] == "round" and e["run"] == run]

    # -- a run -----------------------------------------------------------------------------
    def plan(self, run: str, *, sample_rate: float, steps_per_round: int, rounds: int,
             run_epsilon: float, unit: str = "record") -> Plan:
        """The run's noise multiplier, calibrated once to ALL its planned steps, so that
        (history + this run) reaches min(budget, spent + run_epsilon). A later call for the same
        run must ask for the same plan: the coordinator cannot stretch a run. `unit` is what
        `sample_rate` samples and the clipping bounds: "record" or "person"."""
        with self.locked():
            self._ensure()
            if self._run_delta and self._run_delta < self.delta * (1 - 1e-9):
                raise _refuse(f"run {run} asks for privacy.delta {self._run_delta:g}, below the delta "
                              f"{self.delta:g} this site's ledger {self.path} accounts at (fixed when it "
                              "was created): use privacy.delta=0, or the site resets its ledger",
                              "refused: the run's privacy.delta is below the delta the site accounts at")
            plan = self._plan_of(run)
            if plan is not None:
                asked = (sample_rate, steps_per_round, rounds, run_epsilon)
                if unit != plan.unit or any(abs(a - b) > 1e-12 for a, b in zip(
                        asked, (plan.sample_rate, plan.steps_per_round, plan.rounds, plan.run_epsilon))):
                    raise _refuse(f"run {run}: this round asks for (q, steps/round, rounds, epsilon) = "
                                  f"{asked}, but the run's plan in {self.path} is {asdict(plan)}: the "
                                  "run's privacy settings or the site's data changed mid-run",
                                  "refused: the run's privacy settings differ from its plan at this site")
                return plan
            spent = self.spent()
            target = min(self.budget, spent + run_epsilon)
            if target <= spent + 1e-9:
                raise PrivacyBudgetExceeded(
                    f"privacy budget exhausted: epsilon spent {spent:.3f} of {self.budget:.3f} on this "
                    f"site's data (ledger {self.path}); the site refuses to train")
            sigma = calibrate_noise(self.history, sample_rate=sample_rate, steps=steps_per_round * rounds,
                                    target_epsilon=target, delta=self.delta, accountant=self.accountant)
            plan = Plan(noise_multiplier=sigma, sample_rate=sample_rate, steps_per_round=steps_per_round,
                        rounds=rounds, run_epsilon=run_epsilon, target_epsilon=target, unit=unit)
            self.journal.append({"kind": "plan", "run": run, "dataset": self.dataset[:16],
                                 "num_examples": self.n, "budget": self.budget, **asdict(plan)})
            return plan

    def check(self, run: str, server_round: int) -> float:
        """Epsilon after this run's round `server_round`; refuses (nothing trains) a round that is
        not in the plan, was already trained, or would pass the run's epsilon or the budget."""
        with self.locked():
            self._ensure()
            plan = self._plan_of(run)
            if plan is None:
                raise _refuse(f"run {run} has no plan in {self.path}", "refused: the run has no privacy plan")
            done = self._rounds_of(run)
            if not 1 <= server_round <= plan.rounds or server_round in done or len(done) >= plan.rounds:
                raise _refuse(f"run {run}: round {server_round} refused — the plan has rounds 1..{plan.rounds}"
                              f" and rounds {done} are already trained (no retries, no extra rounds)",
                              "refused: the round is outside the run's privacy plan or was already trained")
            step = (plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)
            after = compute_epsilon(self.history + [step], delta=self.delta, accountant=self.accountant)
            if after > self.budget + TOL:
                raise PrivacyBudgetExceeded(
                    f"round refused: it would raise epsilon from {self.spent():.3f} to {after:.3f}, over "
                    f"the site's budget {self.budget:.3f} (delta {self.delta:.2e}, ledger {self.path})")
            before = compute_epsilon(self._steps(skip_run=run), delta=self.delta, accountant=self.accountant)
            if after - before > plan.run_epsilon + 1e-3:
                raise PrivacyBudgetExceeded(
                    f"round refused: run {run} would add epsilon {after - before:.3f}, more than its planned "
                    f"{plan.run_epsilon:.3f} (ledger {self.path})",
                    public=reason("refused: the round would pass the run's planned epsilon at this site"))
            return after

    def record(self, run: str, server_round: int) -> float:
        """Append the trained round (re-checked under the lock) and return epsilon after it."""
        with self.locked():
            after = self.check(run, server_round)
            plan = self._plan_of(run)
            self.journal.append({"kind": "round", "run": run, "round": server_round,
                                 "noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate,
                                 "steps": plan.steps_per_round, "epsilon": after, "budget": self.budget,
                                 "unit": plan.unit})
            return after

    def record_eval(self, run: str, server_round: int, split: str) -> None:
        """Allow one evaluation of `split` per planned (run, round); refuse any other."""
        with self.locked():
            self._ensure()
            plan = self._plan_of(run)
            seen = any(e["kind"] == "eval" and e["run"] == run and e["round"] == server_round
                       and e["split"] == split for e in self._current())
            if plan is None or not 1 <= server_round <= plan.rounds or seen:
                raise _refuse(f"run {run}: evaluation of the {split} split for round {server_round} refused "
                              f"(plan: {asdict(plan) if plan else 'none'}; already evaluated: {seen}): under DP "
                              "a site evaluates once per planned round", "refused by site rule "
                              "eval-once-per-round: under DP a site evaluates once per planned round")
            self.journal.append({"kind": "eval", "run": run, "round": server_round, "split": split})

    def describe(self) -> str:
        """Lineage, every plan / round / evaluation / reset, whether the journal verifies, and
        `spent epsilon X of budget Y` on the last line (what `fedtune ledger` prints)."""
        lin = self.lineage
        lines = [f"ledger {self.path}  (journal verifies: {len(self.journal.entries)} entries, head "
                 f"{self.journal.marker['head'][:12] if self.journal.marker else '-'})",
                 f"lineage {lin.get('lineage', '-')}  site {lin.get('site', '-')!r}  data {lin.get('source', '-')}",
                 f"delta={self.delta:.2e}  accountant={self.accountant}  budget={self.budget}"]
        for e in self.journal.entries:
            kind, when = e["kind"], time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["time"]))
            if kind == "plan":
                lines.append(f"{when} plan   run {e['run']}: {e['rounds']} rounds x {e['steps_per_round']} steps,"
                             f" q={e['sample_rate']:.5f} ({e.get('unit', 'record')}s) sigma="
                             f"{e['noise_multiplier']:.3f} run epsilon "
                             f"{e['run_epsilon']:g} (target {e['target_epsilon']:.3f})")
            elif kind == "lineage" and e.get("imported"):
                lines.append(f"{when} import {len(e['imported'])} rounds from old ledgers "
                             f"{sorted({i['file'] for i in e['imported']})}")
            elif kind == "round":
                lines.append(f"{when} {kind:<6} run {e['run']} round {e['round']}: sigma={e['noise_multiplier']:.3f}"
                             f" q={e['sample_rate']:.5f} steps={e['steps']} epsilon "
                             f"{e.get('epsilon', float('nan')):.3f}")
            elif kind == "eval":
                lines.append(f"{when} eval   run {e['run']} round {e['round']}: {e['split']} split")
            elif kind == "reset":
                lines.append(f"{when} RESET  reason: {e['reason']}")
        lines.append(f"privacy unit: {self.unit()} (epsilon per {self.unit()})")
        lines.append(f"spent epsilon {self.spent():.4f} of budget {self.budget}")
        return "\n".join(lines)
