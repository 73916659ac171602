"""Pure DP math and the site's randomness: Opacus' accountant over a recorded history, noise
calibration, delta, and CSPRNG-seeded generators (the ledger in client/privacy.py orchestrates)."""

from __future__ import annotations

import os
import secrets
from typing import Any

import numpy as np

from client.policy import PolicyViolation
from common.errors import PrivacyBudgetExceeded, reason

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


def default_delta(n: int) -> float:
    """Below 1/n, as DP practice requires: 1 / (10 n)."""
    return 1.0 / (10 * max(1, n))


def server_round_of(value: Any, rounds: int) -> int:
    """A message's `server-round`, validated as input: an int in 1..federation.rounds."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= int(value) <= rounds:
        raise PolicyViolation(f"server-round = {value!r} is not an integer in 1..{rounds} "
                              "(federation.rounds): the message is refused",
                              public=reason("refused: the message's server-round is not a round of this run"))
    return int(value)


def secure_rng() -> np.random.Generator:
    """DP sampling randomness from the OS CSPRNG: nothing the coordinator sends can predict it."""
    return np.random.default_rng(np.random.SeedSequence(secrets.randbits(128)))


def secure_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") & (2**63 - 1)
