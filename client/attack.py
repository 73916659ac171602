"""A simulated attacker for robustness studies (simulation only: `simulation.attack`). The last
simulated site corrupts the update it sends; the coordinator's validation and robust
aggregation must keep the global adapter sound."""

from __future__ import annotations

import torch

from common.errors import ConfigError


def corrupt(state: dict[str, torch.Tensor], attack: str, *, seed: int) -> dict[str, torch.Tensor]:
    """scale:<f> multiplies the adapter it sends by f; noise:<std> adds Gaussian noise; nan poisons it."""
    kind, _, arg = attack.partition(":")
    gen = torch.Generator().manual_seed(seed + 991)
    if kind == "scale":
        return {k: v * float(arg) for k, v in state.items()}
    if kind == "noise":
        return {k: v + float(arg) * torch.randn(v.shape, generator=gen) for k, v in state.items()}
    if kind == "nan":
        return {k: torch.full_like(v, float("nan")) for k, v in state.items()}
    raise ConfigError(f"simulation.attack = {attack!r}: use scale:<factor>, noise:<std> or nan")
