"""The privacy unit of DP-SGD: the record, or — when the site's data names a person per row
(data.group-column: a customer, a patient) — the person with all their records.

Record-level DP protects one row; a patient with twenty notes is then protected twenty times less
than the epsilon says (group privacy). Person-level DP-SGD fixes that by changing the unit
everywhere the mechanism touches it: Poisson sampling picks persons (each with probability q,
all of that person's rows together), each person's SUMMED gradient is clipped to C, the noise is
calibrated to C, and the accountant runs over persons (q = expected persons per batch / persons).
Rows without a person id are each their own unit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Units:
    """Which train rows form each privacy unit."""

    kind: str  # "record" | "person"
    of_row: np.ndarray  # unit id (0..count-1) of every train row
    count: int

    def rows_of(self, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, local unit id per row 0..len(units)-1) of the given units, a unit's rows together."""
        if self.kind == "record":
            return units, np.arange(len(units))
        local = np.full(self.count, -1)
        local[units] = np.arange(len(units))
        rows = np.flatnonzero(local[self.of_row] >= 0)
        lu = local[self.of_row[rows]]
        order = np.argsort(lu, kind="stable")
        return rows[order], lu[order]

    def sample(self, rng: np.random.Generator, q: float) -> tuple[np.ndarray, np.ndarray]:
        """One Poisson batch: every unit joins with probability q. Returns rows and local ids."""
        return self.rows_of(np.flatnonzero(rng.random(self.count) < q))


def units_of(groups: list[str] | None, n: int) -> Units:
    """Persons from the train rows' group ids (None: every row is a unit of its own)."""
    if groups is None:
        return Units(kind="record", of_row=np.arange(n), count=n)
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group ids for {n} train rows")
    ids: dict[str, int] = {}
    of_row = np.empty(n, dtype=np.int64)
    for i, g in enumerate(groups):
        of_row[i] = ids.setdefault(g, len(ids)) if g else -1
    loose = np.flatnonzero(of_row < 0)  # rows without a person id: each its own unit
    of_row[loose] = len(ids) + np.arange(len(loose))
    return Units(kind="person", of_row=of_row, count=len(ids) + len(loose))


def sum_by_unit(grad_samples: list[torch.Tensor], local: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Per-row gradients -> per-unit sums (what person-level DP clips)."""
    return [torch.zeros((k, *g.shape[1:]), dtype=g.dtype, device=g.device).index_add_(0, local, g)
            for g in grad_samples]


def unit_micro_batches(rows: np.ndarray, local: np.ndarray, lengths: np.ndarray, *,
                       slack: float = 1.5, min_size: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cut a batch into length-sorted micro-batches without splitting a unit (a person's rows
    must be clipped together): units sorted by their longest row, a new micro-batch when padding
    to the next unit's longest row would exceed `slack` x the real tokens."""
    if len(rows) == 0:
        return []
    k = int(local.max()) + 1
    longest = np.zeros(k, dtype=np.int64)
    np.maximum.at(longest, local, lengths[rows])
    tokens = np.bincount(local, weights=lengths[rows], minlength=k)
    size = np.bincount(local, minlength=k)
    parts, current, n_rows, real = [], [], 0, 0.0
    for u in np.argsort(longest, kind="stable"):
        if n_rows > min_size and (n_rows + size[u]) * longest[u] > slack * (real + tokens[u]):
            parts.append(current)
            current, n_rows, real = [], 0, 0.0
        current.append(u)
        n_rows += int(size[u])
        real += float(tokens[u])
    parts.append(current)
    out = []
    for units in parts:
        mask = np.isin(local, units)
        sel_rows, sel_local = rows[mask], local[mask]
        _, renum = np.unique(sel_local, return_inverse=True)
        out.append((sel_rows, renum))
    return out
