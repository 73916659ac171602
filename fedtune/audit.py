"""`fedtune audit RUN_DIR`: in simulation, run the membership-inference audit
(client.audit.loss_threshold_auc) for every site under RUN_DIR/sites (or simulation.sites-dir)
with the final global adapter, and write RUN_DIR/audit.json = {site: auc}.

Each site's splits come from its own split manifest (common.data.prepare_site with the site dir),
so "members" are exactly the rows that site trained on. In deployment the same function runs at
each site and only the AUC travels.
"""

from __future__ import annotations

import json
from pathlib import Path

from client.audit import loss_threshold_auc
from client.trainer import encode
from common.data import prepare_site
from common.atomic import atomic_write_json
from common.errors import DataError
from fedtune.report import sites_root

AUDIT_NAME = "audit.json"


def site_dirs(run_dir: Path) -> list[Path]:
    """The simulated sites' folders that hold a data.csv, sorted by name."""
    return sorted(p for p in sites_root(run_dir).glob("*") if (p / "data.csv").is_file())


def audit_run(run_dir: str | Path, *, max_examples: int = 2000) -> dict[str, float]:
    """AUC per site; writes RUN_DIR/audit.json atomically and returns its content."""
    from fedtune.export import load_adapter_model, load_run

    info = load_run(run_dir)
    sites = site_dirs(info.run_dir)
    if not sites:
        raise DataError(f"{sites_root(info.run_dir)} holds no site folders with data.csv: `fedtune audit` works on "
                        "simulation run directories; in deployment each site runs client.audit itself")
    model, tokenizer = load_adapter_model(info)
    pad = int(getattr(tokenizer, "pad_token_id", 0) or 0)
    cfg = info.cfg
    result: dict[str, float] = {}
    for site in sites:
        prepared = prepare_site(site / "data.csv", cfg=cfg.data, seed=cfg.train.seed, site_dir=site,
                                label_names=info.labels or None, task=cfg.task.type)
        enc = {name: encode(tokenizer, frame["text"].tolist(), frame["label"].to_numpy(),
                            max_length=cfg.model.max_length)
               for name, frame in (("train", prepared.train), ("test", prepared.test))}
        result[site.name] = loss_threshold_auc(model, enc["train"], enc["test"], num_labels=info.num_labels,
                                               max_examples=max_examples, seed=cfg.train.seed, pad_id=pad)
    atomic_write_json(info.run_dir / AUDIT_NAME, result)
    return result


def read_audit(run_dir: str | Path) -> dict[str, float]:
    """RUN_DIR/audit.json, or {} when no audit was run."""
    path = Path(run_dir) / AUDIT_NAME
    if not path.is_file():
        return {}
    try:
        return {str(k): float(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
    except (ValueError, AttributeError) as err:
        raise DataError(f"{path} is not a {{site: auc}} JSON object ({err}): run `fedtune audit` again") from None
