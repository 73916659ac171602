"""Simulated sites: split one pooled table into per-site tables (iid, Dirichlet over labels, or by
a column). Pure functions of (data, seed)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from common.errors import ConfigError, DataError


def partition(df: pd.DataFrame, *, scheme: str, num_sites: int, label_column: str,
              seed: int) -> list[pd.DataFrame]:
    """Return `num_sites` disjoint frames whose union is `df`."""
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        order = rng.permutation(len(df))
        parts = np.array_split(order, num_sites)
    elif scheme.startswith("dirichlet:"):
        alpha = float(scheme.split(":", 1)[1])
        parts = _dirichlet(df[label_column].to_numpy(), num_sites, alpha, rng)
    elif scheme.startswith("column:"):
        col = scheme.split(":", 1)[1]
        if col not in df.columns:
            raise DataError(f"simulation.partition names column {col!r}, which the data does not "
                            f"have (columns: {', '.join(map(str, df.columns))})")
        values = sorted(df[col].astype(str).unique())
        if len(values) < num_sites:
            raise ConfigError(f"column {col!r} has {len(values)} distinct values but simulation.sites "
                              f"= {num_sites}: lower the site count")
        groups = np.array_split(np.array(values, dtype=object), num_sites)
        key = df[col].astype(str).to_numpy()
        parts = [np.flatnonzero(np.isin(key, g)) for g in groups]
    else:
        raise ConfigError(f"unknown partition scheme {scheme!r}: use iid, dirichlet:<alpha> or "
                          "column:<name>")
    return [df.iloc[np.sort(p)].reset_index(drop=True) for p in parts]


def _dirichlet(labels: np.ndarray, n: int, alpha: float, rng) -> list[np.ndarray]:
    """Per label, split its rows over the sites in Dirichlet(alpha) proportions; retry until every
    site gets at least 10 rows (at most 100 tries) so no site is empty."""
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(n)]
        for lab in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == lab))
            props = rng.dirichlet(np.full(n, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for site, chunk in enumerate(np.split(idx, cuts)):
                parts[site].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min(10, len(labels) // n):
            break
    return [np.array(p, dtype=int) for p in parts]
