"""A site's own policy: which federation runs it agrees to train in.

The site writes a TOML file, never sent to the coordinator; every key, its meaning and its
default are documented in deploy/site-policy.example.toml (max-epsilon, privacy-budget,
base-model-sha256, task-types, share-metrics, min-rows, app-sha256, and the privacy rules a run
config cannot override: require-scrub, allow-augment-under-dp, max-delta, max-rounds-per-run,
allow-full-finetune, allow-local-models-under-dp, secagg-min-cohort, secagg-min-threshold).

`fedtune site start --policy FILE` validates it once and hands the values to the ClientApp as
flat node config (Flower's node config allows nothing else): `policy-file`, and `policy-<key>`
for each key (lists comma-separated, absent = not set); `privacy-budget` keeps its name (the
ledger's cap) and `app-sha256` is read from the file by the runtime itself (client/runtime.py). `SitePolicy.to_node_config` and
`policy_from_node_config` are the two directions of that mapping.

`site_policy(node_config)` is the policy to apply: the file's, or the safe defaults when the site
gave none (the privacy rules hold even at a site without a policy file). The ClientApp calls
`enforce_policy(context.node_config, cfg, rows=...)` at the top of every handler; a refused run
raises `PolicyViolation`, whose code and fixed reason are all the coordinator receives.
"""

from __future__ import annotations

import functools
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import TASKS, RunConfig
from common.errors import REFUSED, ConfigError, FedtuneError, reason

from client.policy_rules import privacy_rules

KEYS = ("max-epsilon", "base-model-sha256", "task-types", "share-metrics", "min-rows",
        "privacy-budget", "max-delta", "require-scrub", "allow-augment-under-dp",
        "max-rounds-per-run", "allow-full-finetune", "secagg-min-cohort", "secagg-min-threshold",
        "app-sha256", "allow-local-models-under-dp")
# file key -> (SitePolicy field, type) of the scalar keys that travel as `policy-<key>`
SCALARS = {"require-scrub": ("require_scrub", bool), "allow-augment-under-dp": ("allow_augment_under_dp", bool),
           "max-rounds-per-run": ("max_rounds_per_run", int), "allow-full-finetune": ("allow_full_finetune", bool),
           "secagg-min-cohort": ("secagg_min_cohort", int), "secagg-min-threshold": ("secagg_min_threshold", float),
           "allow-local-models-under-dp": ("allow_local_models_under_dp", bool)}
NODE_KEYS = ("policy-file", "policy-max-epsilon", "policy-base-sha256", "policy-task-types",
             "policy-share-metrics", "policy-min-rows", "policy-max-delta",
             *(f"policy-{k}" for k in SCALARS))


class PolicyViolation(FedtuneError, RuntimeError):
    """A run asks for something the site's policy does not allow; the site refuses to train.
    Raise it with `public=` naming the rule and the fix, never a value (common/errors.py)."""

    code = REFUSED
    public = "refused by the site's policy; the site's operator sees which rule in the site's log"


@dataclass(frozen=True)
class SitePolicy:
    """What one site accepts. Empty tuples mean "any"; max_epsilon None means "DP not required"."""

    max_epsilon: float | None = None
    base_sha256: tuple[str, ...] = ()
    task_types: tuple[str, ...] = ()
    share_metrics: bool = True
    min_rows: int = 0
    privacy_budget: float | None = None  # lifetime epsilon cap of this site's ledger
    max_delta: float | None = None  # None: only the rule delta < 1/n
    require_scrub: bool = True  # a run cannot switch PII scrubbing off at this site
    allow_augment_under_dp: bool = False  # augmented copies are the same person: off under DP
    max_rounds_per_run: int = 0  # 0 = no cap beyond the run's plan
    allow_full_finetune: bool = True
    secagg_min_cohort: int = 3  # enforced by client/secagg.py
    secagg_min_threshold: float = 0.5  # SecAgg+ threshold must be > this fraction of the cohort
    allow_local_models_under_dp: bool = False  # local-only / personalized training spends epsilon
    app_sha256: tuple[str, ...] = ()  # accepted run bundles (client/runtime.py); () = the version
    source: str = ""  # the policy file, named in every message
    site: str = ""

    def __post_init__(self) -> None:
        where = self.source or "site policy"
        if self.max_epsilon is not None and not self.max_epsilon > 0:
            raise ConfigError(f"{where}: max-epsilon = {self.max_epsilon!r} must be > 0 (e.g. 8.0); "
                              "omit the key if the site does not require differential privacy")
        for t in self.task_types:
            if t not in TASKS:
                raise ConfigError(f"{where}: task-types lists {t!r}: use any of {', '.join(TASKS)}")
        for h in self.base_sha256:
            if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
                raise ConfigError(f"{where}: base-model-sha256 entry {h!r} is not a 64-digit lowercase "
                                  "hex sha256; compute it with `python -c \"from common.model import "
                                  "model_fingerprint; print(model_fingerprint('MODEL_DIR'))\"`")
        for h in self.app_sha256:
            if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
                raise ConfigError(f"{where}: app-sha256 entry {h!r} is not a 64-digit hex sha256: "
                                  "pin the sha256 of the agreed release's bundle (the site's "
                                  "runtime.log names the hash of every bundle it refuses)")
        if self.min_rows < 0:
            raise ConfigError(f"{where}: min-rows = {self.min_rows} must be 0 or more")
        if self.privacy_budget is not None and not self.privacy_budget > 0:
            raise ConfigError(f"{where}: privacy-budget = {self.privacy_budget!r} must be > 0 "
                              "(e.g. 10.0); omit it to take the run's privacy.budget")
        if self.max_delta is not None and not 0 < self.max_delta < 1:
            raise ConfigError(f"{where}: max-delta = {self.max_delta!r} must be in (0, 1), e.g. 1e-5; "
                              "omit it to keep only the rule delta < 1/n")
        if self.max_rounds_per_run < 0:
            raise ConfigError(f"{where}: max-rounds-per-run = {self.max_rounds_per_run} must be 0 (no cap) "
                              "or more")
        if self.secagg_min_cohort < 2:
            raise ConfigError(f"{where}: secagg-min-cohort = {self.secagg_min_cohort} must be 2 or more "
                              "(a masked sum over one site is that site's update); e.g. 3")
        if not 0 < self.secagg_min_threshold < 1:
            raise ConfigError(f"{where}: secagg-min-threshold = {self.secagg_min_threshold!r} must be a "
                              "fraction in (0, 1), e.g. 0.5 (threshold strictly above half the cohort)")

    def to_node_config(self) -> dict[str, Any]:
        """The flat node-config keys (see the module docstring)."""
        out: dict[str, Any] = {"policy-file": self.source, "policy-base-sha256": ",".join(self.base_sha256),
                               "policy-task-types": ",".join(self.task_types),
                               "policy-share-metrics": self.share_metrics, "policy-min-rows": self.min_rows}
        if self.max_epsilon is not None:
            out["policy-max-epsilon"] = float(self.max_epsilon)
        if self.privacy_budget is not None:
            out["privacy-budget"] = float(self.privacy_budget)
        if self.max_delta is not None:
            out["policy-max-delta"] = float(self.max_delta)
        for key, (field, _) in SCALARS.items():
            out[f"policy-{key}"] = getattr(self, field)
        return out


def _strings(where: str, key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in value.split(",")]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: `{key}` must be a list of strings, e.g. {key} = [\"...\"]")
    lower = key in ("base-model-sha256", "app-sha256")
    return tuple(v.strip().lower() if lower else v.strip() for v in value if v.strip())


def _typed(where: str, key: str, value: Any, typ: type) -> Any:
    ok = isinstance(value, typ) and not (typ is not bool and isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise ConfigError(f"{where}: `{key}` = {value!r} must be a {typ.__name__}")
    return value


def policy_from_dict(values: dict[str, Any], *, source: str = "", site: str = "") -> SitePolicy:
    """Build a policy from the TOML file's keys, rejecting unknown or mistyped ones."""
    where = source or "site policy"
    for key in values:
        if key not in KEYS:
            raise ConfigError(f"{where}: unknown key `{key}`; valid keys: {', '.join(KEYS)}")
    eps, budget, delta = values.get("max-epsilon"), values.get("privacy-budget"), values.get("max-delta")
    scalars = {field: _typed(where, key, values[key], typ) for key, (field, typ) in SCALARS.items()
               if key in values}
    return SitePolicy(**scalars,
        max_delta=None if delta is None else _typed(where, "max-delta", delta, float),
        max_epsilon=None if eps is None else _typed(where, "max-epsilon", eps, float),
        base_sha256=_strings(where, "base-model-sha256", values.get("base-model-sha256", [])),
        task_types=_strings(where, "task-types", values.get("task-types", [])),
        app_sha256=_strings(where, "app-sha256", values.get("app-sha256", [])),
        share_metrics=_typed(where, "share-metrics", values.get("share-metrics", True), bool),
        min_rows=_typed(where, "min-rows", values.get("min-rows", 0), int),
        privacy_budget=None if budget is None else _typed(where, "privacy-budget", budget, float),
        source=source, site=site)


def load_policy(path: str | Path) -> SitePolicy:
    """Read and validate a site policy TOML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"site policy file {path} does not exist: check --policy, or start from "
                          "deploy/site-policy.example.toml")
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"site policy file {path} is not valid TOML ({err}): fix the line it names") from err
    return policy_from_dict(values, source=str(path.resolve()))


def policy_from_node_config(node_config: dict[str, Any]) -> SitePolicy | None:
    """The policy `fedtune site start` put into the node config; None when the site has none."""
    if not any(str(k).startswith("policy-") for k in node_config):
        return None
    src = str(node_config.get("policy-file", "site policy"))
    values: dict[str, Any] = {
        "base-model-sha256": str(node_config.get("policy-base-sha256", "")),
        "task-types": str(node_config.get("policy-task-types", "")),
        "share-metrics": bool(node_config.get("policy-share-metrics", True)),
        "min-rows": int(node_config.get("policy-min-rows", 0)),
    }
    if "policy-max-epsilon" in node_config:
        values["max-epsilon"] = float(node_config["policy-max-epsilon"])
    if "privacy-budget" in node_config:
        values["privacy-budget"] = float(node_config["privacy-budget"])
    if "policy-max-delta" in node_config:
        values["max-delta"] = float(node_config["policy-max-delta"])
    for key, (_, typ) in SCALARS.items():
        if f"policy-{key}" in node_config:
            raw = node_config[f"policy-{key}"]
            values[key] = _flag(raw) if typ is bool else typ(raw)
    return policy_from_dict(values, source=src, site=str(node_config.get("site-name", "")))


def _flag(raw: Any) -> bool:
    """Node-config booleans may arrive as bool or as the strings true/false."""
    if isinstance(raw, str):
        if raw.strip().lower() not in ("true", "false"):
            raise ConfigError(f"node config: {raw!r} is not a boolean; write true or false")
        return raw.strip().lower() == "true"
    return bool(raw)


def site_policy(node_config: dict[str, Any]) -> SitePolicy:
    """The policy to apply at this site: the one in its node config, or the safe defaults (scrub
    required, no augmentation under DP, delta < 1/n, SecAgg+ cohort >= 3) when it has none."""
    return policy_from_node_config(node_config) or SitePolicy(site=str(node_config.get("site-name", "")))


def run_epsilon(cfg: RunConfig) -> float | None:
    """The run's DP epsilon (privacy.epsilon when privacy.dp is on), or None without DP."""
    priv = getattr(cfg, "privacy", None)
    if priv is None or not getattr(priv, "dp", False):
        return None
    return float(priv.epsilon)


def check_policy(policy: SitePolicy, cfg: RunConfig, *, base_fingerprint: str,
                 rows: int | None = None) -> None:
    """Raise PolicyViolation listing every way `cfg` breaks `policy` (pure: no I/O).

    `base_fingerprint` is model_fingerprint() of the run's base model on this site's disk;
    `rows` (optional) is the size of the site's training split, checked against min-rows."""
    who = f"site {policy.site!r}" if policy.site else "this site"
    src = Path(policy.source).name if policy.source else "its policy"  # no site paths leave the site
    problems: list[str] = []
    if policy.task_types and cfg.task.type not in policy.task_types:
        problems.append(f"task.type = {cfg.task.type!r} is not in the allowed task-types "
                        f"[{', '.join(policy.task_types)}]: run an allowed task, or the site adds "
                        f"{cfg.task.type!r} to task-types")
    if policy.base_sha256 and base_fingerprint.lower() not in policy.base_sha256:
        problems.append(f"the base model (model.base = {cfg.model.base or 'default all-MiniLM-L6-v2'!r})"
                        f" has sha256 {base_fingerprint[:16]}…, not one of the pinned base-model-sha256 "
                        f"[{', '.join(h[:16] + '…' for h in policy.base_sha256)}]: use the pinned base "
                        "model, or the site pins this one after reviewing it")
    if policy.max_epsilon is not None:
        eps = run_epsilon(cfg)
        if eps is None:
            problems.append(f"the run trains without differential privacy, but the site requires DP "
                            f"with epsilon <= {policy.max_epsilon:g}: enable DP in the run config")
        elif eps > policy.max_epsilon:
            problems.append(f"the run's epsilon {eps:g} exceeds the site's max-epsilon "
                            f"{policy.max_epsilon:g}: lower the run's epsilon")
    if rows is not None and rows < policy.min_rows:
        problems.append(f"the site has {rows} training rows, fewer than min-rows = {policy.min_rows}: "
                        "the site does not train on so little data (add data or lower min-rows)")
    rules = privacy_rules(policy, cfg, rows)
    problems += [text for text, _ in rules]
    if problems:
        # only privacy rules broken: the first one's fixed reason crosses the wire
        public = reason(rules[0][1]) if rules and len(rules) == len(problems) else None
        raise PolicyViolation(f"{who} refuses this run ({src}): " + "; ".join(problems), public=public)


def redact_metrics(policy: SitePolicy | None, metrics: dict[str, Any]) -> dict[str, Any]:
    """With share-metrics = false only the example count leaves the site (FedAvg needs it)."""
    if policy is None or policy.share_metrics:
        return metrics
    return {k: v for k, v in metrics.items() if k in ("num-examples", "num_examples")}


@functools.lru_cache(maxsize=4)
def _fingerprint(path: str, stamp: tuple) -> str:
    from common.model import model_fingerprint

    del stamp  # part of the cache key only: a changed model directory is hashed again
    return model_fingerprint(path)


def base_fingerprint(cfg: RunConfig) -> str:
    """sha256 of the run's base model as found on this site's disk (memoised per directory state)."""
    from common.model import resolve_base

    path = resolve_base(cfg.model)
    stamp = tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(path)
                         if e.is_file()))
    return _fingerprint(path, stamp)


def enforce_policy(node_config: dict[str, Any], cfg: RunConfig, *,
                   rows: int | None = None) -> SitePolicy:
    """The ClientApp's one call: load the node's policy (or the safe defaults) and refuse a
    violating run. `rows`: the site's distinct training records (Site.records(), before any
    augmentation copies), checked against min-rows and delta < 1/n."""
    policy = site_policy(node_config)
    check_policy(policy, cfg, base_fingerprint=base_fingerprint(cfg) if policy.base_sha256 else "",
                 rows=rows)
    return policy
