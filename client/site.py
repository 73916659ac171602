"""A site's long-lived state inside one process: its prepared data (validated, cleaned, scrubbed,
split), the tokenised splits and the model. Built once per process and reused for every round:
Flower re-creates the ClientApp for each message, but the process (a Ray actor in simulation)
stays, so reloading the model and re-tokenising every round is pure waste."""

from __future__ import annotations

import collections
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from client.dp_fit import fit_dp
from client.dp_trainer import dp_device
from client.lm import encode_lm, evaluate_lm, prepare_lm_site
from client.privacy import PrivacyLedger, secure_rng, secure_seed, server_round_of
from client.probe import resolve_batch_size
from client.trainer import (
    Encoded,
    Schedule,
    encode,
    evaluate,
    make_loss,
    predict,
    steps_per_round,
    train,
)
from common.adapter import FFA_FROZEN, get_state, set_state
from common.config import RunConfig
from common.data import prepare_site
from common.device import Accel, accel_for, place
from common.errors import ConfigError, reason
from common.metrics import softmax, tune_threshold
from common.model import build_model


LABELS_INLINE = reason("task.labels must list the label names inline: a site never reads a file "
                       "the run config names (`fedtune run` inlines task.labels=@file)")


@dataclass(frozen=True)
class SiteFacts:
    """Facts about one site that only the site decides (from its node config, never the server)."""

    name: str
    index: int
    data_path: str
    site_dir: str
    privacy_budget: float = 0.0  # the site's own lifetime epsilon cap (0 = take the run's)
    max_delta: float = 0.0  # the site policy's max-delta (0 = only delta < 1/n), for the ledger


def site_facts(node_config: dict, cfg: RunConfig) -> SiteFacts:
    """Deployment: node config names `data-path` and `site-dir`. Simulation: the partition id
    picks `<run_dir>/sites/site-<id>/data.csv`, written by `fedtune simulate`."""
    if "data-path" in node_config:
        if cfg.task.labels.startswith("@"):  # a path chosen by the coordinator: never followed
            raise ConfigError(f"task.labels = {cfg.task.labels!r} names a file; a deployed site "
                              "takes the label space only inline", public=LABELS_INLINE)
        data_path = str(node_config["data-path"])
        site_dir = str(node_config.get("site-dir") or Path(data_path).parent / ".fedtune")
        index = int(node_config.get("site-index", 0))
        name = str(node_config.get("site-name") or f"site-{index}")
        return SiteFacts(name=name, index=index, data_path=data_path, site_dir=site_dir,
                         privacy_budget=float(node_config.get("privacy-budget", 0.0)),
                         max_delta=float(node_config.get("policy-max-delta", 0.0)))
    if "partition-id" in node_config:
        if not cfg.output.run_dir:
            raise ConfigError("simulation needs output.run-dir (set by `fedtune simulate`): run the "
                              "federation with `fedtune simulate`, which partitions the data first")
        index = int(node_config["partition-id"])
        sites = Path(cfg.simulation.sites_dir or Path(cfg.output.run_dir) / "sites")
        site_dir = sites / f"site-{index}"
        budgets = [float(b) for b in cfg.simulation.site_budgets.split(",") if b.strip()]
        return SiteFacts(name=f"site-{index}", index=index,
                         data_path=str(site_dir / "data.csv"), site_dir=str(site_dir),
                         privacy_budget=budgets[index] if index < len(budgets) else 0.0)
    raise ConfigError("this SuperNode has no `data-path` in its node config: start it with "
                      "`fedtune site start --data FILE` (or --node-config 'data-path=\"FILE\"')")


class Site:
    """Model + tokenised splits of one site, reused across rounds."""

    def __init__(self, cfg: RunConfig, facts: SiteFacts):
        t0 = time.perf_counter()
        self.cfg, self.facts = cfg, facts
        self.task = cfg.task.type
        self.label_names = cfg.task.label_names()
        self.num_labels = {"regression": 1, "causal-lm": 0}.get(self.task, len(self.label_names))
        if cfg.privacy.dp and self.proximal_mu(cfg) > 0:
            raise ConfigError("federation.strategy = \"fedprox\" with privacy.dp: the proximal term "
                              "is not part of the DP-SGD per-example gradients; set "
                              "federation.proximal-mu=0 or use fedavg")
        if self.task == "causal-lm":
            prepared = prepare_lm_site(facts.data_path, cfg=cfg, site_dir=facts.site_dir)
        else:
            prepared = prepare_site(facts.data_path, cfg=cfg.data, seed=cfg.train.seed,
                                    label_names=self.label_names or None, task=self.task,
                                    site_dir=facts.site_dir)
        self.report, self.fingerprint = prepared.report, prepared.fingerprint
        # person of each train row (data.group-column): the privacy unit of DP-SGD (client/dp_units.py)
        self.train_groups = getattr(prepared, "train_groups", None)
        self.dp_cache: dict = {}  # client/dp_fit.py: the head's inputs while only the head trains
        if cfg.privacy.dp and cfg.train.grad_accum > 1:
            raise ConfigError("train.grad-accum > 1 with privacy.dp: DP-SGD already accumulates "
                              "length-sorted micro-batches of each Poisson batch (expected size "
                              "train.batch-size); set train.grad-accum=1 and raise train.batch-size")
        # a clear ConfigError now when CUDA is asked for and absent; DP-SGD always runs in fp32
        self.accel = Accel(device=dp_device(cfg.train)) if cfg.privacy.dp else accel_for(cfg.train)
        built = build_model(cfg.model, num_labels=self.num_labels, seed=cfg.train.seed, task=self.task,
                            device=self.accel.device)
        self.model, self.tokenizer = built.model, built.tokenizer
        place(self.model, self.accel.device)
        self.exclude = FFA_FROZEN if cfg.ffa else ()
        if cfg.ffa:  # A stays at the init every party derives from the shared seed
            for name, p in self.model.named_parameters():
                if any(part in name for part in FFA_FROZEN):
                    p.requires_grad = False
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.splits: dict[str, Encoded] = {}
        for split in ("train", "val", "test"):
            frame = getattr(prepared, split)
            if self.task == "causal-lm":
                self.splits[split] = encode_lm(self.tokenizer, frame["text"].tolist(),
                                               frame["label"].tolist(),
                                               template=cfg.task.prompt_template,
                                               max_length=cfg.model.max_length)
            else:
                self.splits[split] = encode(self.tokenizer, frame["text"].tolist(),
                                            frame["label"].to_numpy(), max_length=cfg.model.max_length)
        # class weights come from this site's own train counts, never from other sites
        self.loss = make_loss(cfg.train, train_labels=self.splits["train"].labels,
                              num_labels=self.num_labels)
        size, how = resolve_batch_size(self.model, self.splits["train"], cfg=cfg.train, loss=self.loss,
                                       pad_id=self.pad_id, site_dir=facts.site_dir, dp=cfg.privacy.dp)
        if size != cfg.train.batch_size:  # `auto` resolved: every later step uses the number
            self.cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=size))
        print(f"fedtune {facts.name}: {self.accel.describe()}, batch size {size} ({how}), "
              f"grad-accum {cfg.train.grad_accum}", file=sys.stderr, flush=True)
        self.setup_seconds = time.perf_counter() - t0

    @staticmethod
    def proximal_mu(cfg: RunConfig) -> float:
        return cfg.federation.proximal_mu if cfg.federation.strategy == "fedprox" else 0.0

    def budget(self) -> float:
        """The lineage's lifetime epsilon cap: the site's (node config `privacy-budget`); a site
        that set none keeps the cap fixed when its ledger was created (client/privacy.py)."""
        return self.ledger().budget

    def records(self) -> int:
        """Distinct training records (people), before augmentation copies: what min-rows and
        delta < 1/n count (the handler passes it as enforce_policy's `rows`)."""
        split = self.report.get("steps", {}).get("split", {})
        return int(split.get("train", self.report.get("rows", {}).get("train", len(self.splits["train"]))))

    def ledger(self) -> PrivacyLedger:
        """The ledger of this site's data LINEAGE (site name + data file), whatever the settings."""
        return PrivacyLedger(self.facts.site_dir, site=self.facts.name,
                             source=str(Path(self.facts.data_path).resolve()),
                             num_examples=self.records(), budget=self.facts.privacy_budget,
                             run_budget=self.cfg.privacy.budget or self.cfg.privacy.epsilon,
                             accountant=self.cfg.privacy.accountant,
                             max_delta=self.facts.max_delta or None,
                             run_delta=self.cfg.privacy.delta, dataset=self.fingerprint)

    def fit(self, state: dict[str, torch.Tensor], *, server_round: int, run: str = "local",
            progress: bool = False, proximal: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Load the global state, train this round's local steps, return the new state.
        `proximal=False`: no FedProx term (the site's local-only model, client/baseline.py).

        Under DP the ledger is read from disk, the round is checked against the budget BEFORE
        training (PrivacyBudgetExceeded = refused), and the round is recorded after it."""
        server_round = server_round_of(server_round, self.cfg.federation.rounds)
        set_state(self.model, state, exclude=self.exclude)
        train_split = self.splits["train"]
        per_round = steps_per_round(len(train_split), self.cfg.train)
        total = per_round * self.cfg.federation.rounds
        sched = Schedule(start_step=(server_round - 1) * per_round, total_steps=total,
                         warmup_steps=int(self.cfg.train.warmup_ratio * total))
        if self.cfg.privacy.dp:  # DP sampling and noise: OS CSPRNG, never train.seed (coordinator's)
            rng = secure_rng()
            torch.manual_seed(secure_seed())
        else:  # reproducible from the seed
            rng = np.random.default_rng([self.cfg.train.seed, self.facts.index, server_round])
            torch.manual_seed(hash((self.cfg.train.seed, self.facts.index, server_round)) % 2**31)
        t0 = time.perf_counter()
        if self.cfg.privacy.dp:
            stats = fit_dp(self, server_round=server_round, run=run, rng=rng, progress=progress)
        else:
            # FedProx: `train` anchors the proximal term at the global state just loaded
            stats = train(self.model, train_split, cfg=self.cfg.train, schedule=sched, rng=rng,
                          pad_id=self.pad_id, progress=progress,
                          desc=f"{self.facts.name} r{server_round}", loss=self.loss,
                          proximal_mu=self.proximal_mu(self.cfg) if proximal else 0.0)
        if not self.cfg.privacy.dp:  # under DP the time tracks the random batch sizes: not released
            stats["train_seconds"] = time.perf_counter() - t0
        return get_state(self.model, exclude=self.exclude), stats

    def evaluate(self, state: dict[str, torch.Tensor], *, split: str = "test", run: str = "local",
                 server_round: int | None = None) -> dict[str, float]:
        """Metrics of `state` on one split. Under DP a coordinator's request (server_round given)
        is allowed once per planned (run, round, split) (PolicyViolation otherwise), and no
        threshold tuned on the site's data is used or released."""
        if self.cfg.privacy.dp and server_round is not None:
            self.ledger().record_eval(run, server_round_of(server_round, self.cfg.federation.rounds), split)
        set_state(self.model, state, exclude=self.exclude)
        data = self.splits[split]
        t0 = time.perf_counter()
        if self.task == "causal-lm":
            metrics = evaluate_lm(self.model, data, tokenizer=self.tokenizer, pad_id=self.pad_id,
                                  generate_tokens=self.cfg.task.generate_tokens)
        elif self.num_labels == 2 and not self.cfg.privacy.dp:
            # binary: the threshold that maximises class-1 F1 on this site's val split, always
            # reported; predictions use it only with train.tune-threshold
            val = self.splits["val"]
            threshold = tune_threshold(softmax(predict(self.model, val, pad_id=self.pad_id))[:, 1],
                                       val.labels) if len(val) else 0.5
            metrics = evaluate(self.model, data, num_labels=2, pad_id=self.pad_id,
                               threshold=threshold if self.cfg.train.tune_threshold else None)
            metrics["threshold"] = threshold
        else:
            metrics = evaluate(self.model, data, num_labels=self.num_labels, pad_id=self.pad_id)
        metrics["eval_seconds"] = time.perf_counter() - t0
        metrics["num_examples"] = len(data)
        return metrics


def set_threads(cfg: RunConfig) -> None:
    """torch threads for this process: train.threads, or the cores shared by concurrent sites."""
    threads = cfg.train.threads
    if not threads:
        threads = int(os.environ.get("FEDTUNE_SITE_THREADS", "0")) or (os.cpu_count() or 1)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _stamp(path: str | Path) -> tuple:
    """What identifies a file's or directory's state cheaply: names, sizes, modification times."""
    path = Path(path)
    if path.is_dir():
        return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns)
                            for e in os.scandir(path) if e.is_file()))
    try:
        st = path.stat()
    except OSError:
        return ()
    return (st.st_size, st.st_mtime_ns)


class _Memo:
    """A small LRU of warm sites (a deployed runtime serves one site; a simulation's Ray actor
    may serve a few partitions). Old entries are dropped, so memory stays bounded."""

    def __init__(self, size: int):
        self.size, self.items = size, collections.OrderedDict()

    def get(self, key: tuple, build) -> Site:
        if key in self.items:
            self.items.move_to_end(key)
        else:
            self.items[key] = build()
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return self.items[key]


_SITES = _Memo(4)


def clear_sites() -> None:
    """Drop every warm site of this process (benchmarks running many federations in one)."""
    _SITES.items.clear()


def get_site(cfg: RunConfig, facts: SiteFacts) -> Site:
    """The process-wide memo of warm sites: prepared data, tokenised splits, model and tokenizer
    stay in memory across messages and rounds, keyed by the resolved config's hash, the site's
    facts and the state of its data file and base model (either changed: rebuilt)."""
    from common.model import resolve_base

    set_threads(cfg)
    key = (cfg.hash(), cfg.output.run_dir, facts, _stamp(facts.data_path),
           _stamp(resolve_base(cfg.model)))
    return _SITES.get(key, lambda: Site(cfg, facts))
