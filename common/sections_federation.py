"""The [federation] and [simulation] sections of the run config (the others: common/sections.py):
how rounds run and are aggregated, and how `fedtune simulate` splits a pooled file into sites."""

from __future__ import annotations

from dataclasses import dataclass

from common.sections import check, key

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad")


@dataclass
class FederationConfig:
    rounds: int = key(3, "federated rounds")
    strategy: str = key("fedavg", "aggregation strategy: " + " | ".join(STRATEGIES))
    min_sites: int = key(2, "a round needs at least this many valid replies")
    fraction_train: float = key(1.0, "share of the connected sites asked to train each round")
    round_timeout: float = key(3600.0, "seconds to wait for the sites in one round")
    evaluate_every: int = key(1, "federated evaluation on every site's test split every N rounds")
    proximal_mu: float = key(0.01, "fedprox: each site adds mu/2 * ||w - w_global||^2 to its loss")
    server_lr: float = key(0.01, "fedadam / fedyogi / fedadagrad server learning rate (Flower's own "
                           "0.1 / 0.01 / 0.1 is sized for whole-model weights; LoRA deltas are small)")
    server_beta1: float = key(0.9, "fedadam / fedyogi first-moment decay")
    server_beta2: float = key(0.99, "fedadam / fedyogi second-moment decay")
    server_tau: float = key(0.001, "adaptivity: larger = closer to plain averaging of small deltas")
    round_retries: int = key(2, "a round with fewer than min-sites valid replies is retried this often")
    aggregation: str = key("mean", "robust aggregation: mean (FedAvg family) | median (FedMedian) | "
                           "trimmed-mean | norm-clip")
    trim_fraction: float = key(0.2, "trimmed-mean: fraction cut at each end")
    clip_norm: float = key(1.0, "norm-clip: every site's update is clipped to this L2 norm")
    max_norm_factor: float = key(10.0, "reject an update whose norm exceeds this x the others' "
                                 "median; 0 = off")
    max_examples: int = key(10_000_000, "reject replies claiming more examples than this")
    max_update_norm: float = key(0.0, "absolute bound on one site's update norm (works with any "
                                 "number of sites); 0 = off")
    weighting: str = key("examples", "how sites' updates are weighted: examples (FedAvg, by the "
                         "bounded num-examples) | uniform")
    early_stopping_patience: int = key(0, "early stopping on the weighted validation metric: rounds "
                                       "without improvement; 0 = off")
    early_stopping_min_delta: float = key(0.0, "early stopping: the smallest change that counts as "
                                          "an improvement")
    early_stopping_metric: str = key("loss", "a validation metric: loss (lower is better), accuracy, "
                                     "macro_f1, rmse")
    baselines: bool = key(False, "each site also trains a local-only model (its own train split, "
                          "the run's rounds x local epochs) and reports its test metrics as local_*; "
                          "the model stays at the site; under DP only where the site's policy "
                          "allows it (accounted)")
    personalize_epochs: float = key(0.0, "after the last round each site fine-tunes the global "
                                    "adapter this many epochs on its own train split, keeps it "
                                    "(<site-dir>/personalized/) and reports personal_*; 0 = off")

    def __post_init__(self) -> None:
        check(self.rounds >= 1, "federation.rounds", self.rounds, "use 1 or more rounds")
        check(self.strategy in STRATEGIES, "federation.strategy", self.strategy,
              f"use one of {', '.join(STRATEGIES)}")
        check(self.min_sites >= 1, "federation.min-sites", self.min_sites, "use 1 or more")
        check(0 < self.fraction_train <= 1, "federation.fraction-train", self.fraction_train,
              "use a fraction in (0, 1]")
        check(self.evaluate_every >= 1, "federation.evaluate-every", self.evaluate_every,
              "use 1 or more")
        check(self.proximal_mu >= 0, "federation.proximal-mu", self.proximal_mu,
              "use 0 or more (0.001-0.1 is typical)")
        check(self.server_lr > 0, "federation.server-lr", self.server_lr, "use a value > 0, e.g. 0.01")
        for name, beta in (("server-beta1", self.server_beta1), ("server-beta2", self.server_beta2)):
            check(0 <= beta < 1, f"federation.{name}", beta, "use a value in [0, 1)")
        check(self.server_tau > 0, "federation.server-tau", self.server_tau, "use a value > 0, e.g. 0.001")
        check(self.round_retries >= 0, "federation.round-retries", self.round_retries, "use 0 or more")
        check(self.aggregation in ("mean", "median", "trimmed-mean", "norm-clip"),
              "federation.aggregation", self.aggregation,
              "use mean, median, trimmed-mean or norm-clip")
        check(0 <= self.trim_fraction < 0.5, "federation.trim-fraction", self.trim_fraction,
              "use a fraction in [0, 0.5)")
        check(self.clip_norm > 0, "federation.clip-norm", self.clip_norm, "use a norm > 0")
        check(self.max_norm_factor >= 0, "federation.max-norm-factor", self.max_norm_factor,
              "use 0 (off) or a factor such as 10")
        check(self.max_examples >= 1, "federation.max-examples", self.max_examples, "use 1 or more")
        check(self.max_update_norm >= 0, "federation.max-update-norm", self.max_update_norm,
              "use 0 (off) or a positive norm, e.g. 10")
        check(self.weighting in ("examples", "uniform"), "federation.weighting", self.weighting,
              "use examples or uniform")
        check(self.early_stopping_patience >= 0, "federation.early-stopping-patience",
              self.early_stopping_patience, "use 0 (off) or a number of rounds")
        check(self.early_stopping_metric in ("loss", "accuracy", "macro_f1", "rmse", "mae"),
              "federation.early-stopping-metric", self.early_stopping_metric,
              "use loss, accuracy, macro_f1, rmse or mae")
        check(self.personalize_epochs >= 0, "federation.personalize-epochs", self.personalize_epochs,
              "use 0 (off) or a few epochs, e.g. 1")


@dataclass
class SimulationConfig:
    data: str = key("data/banking77_demo.csv", "the pooled file that is split into simulated sites")
    sites: int = key(3, "simulated sites")
    partition: str = key("dirichlet:0.5", "iid | dirichlet:<alpha> | column:<name>")
    concurrency: int = key(0, "site processes training at once; 0 = automatic (cores / 2, at least 1)")
    sites_dir: str = key("", "where simulated sites keep data, splits and privacy ledgers; \"\" = <run>/sites")
    site_budgets: str = key("", "stand-in for each simulated site's own node config: lifetime epsilon "
                            "caps, comma-separated per site (e.g. \"10,10,1\"); \"\" = every site "
                            "takes privacy.budget")
    attack: str = key("", "a simulated attacker for robustness studies: the LAST site corrupts its "
                      "update: \"\" (none) | scale:<factor> | noise:<std> | nan")

    def __post_init__(self) -> None:
        check(self.sites >= 1, "simulation.sites", self.sites, "use 1 or more sites")
        ok = self.partition == "iid" or self.partition.startswith(("dirichlet:", "column:"))
        check(ok, "simulation.partition", self.partition,
              "use `iid`, `dirichlet:<alpha>` (e.g. dirichlet:0.5) or `column:<name>`")
        if self.partition.startswith("dirichlet:"):
            try:
                alpha = float(self.partition.split(":", 1)[1])
            except ValueError:
                alpha = -1.0
            check(alpha > 0, "simulation.partition", self.partition,
                  "alpha must be a positive number, e.g. dirichlet:0.5")
