"""The run directory contract other tools read:

    config.toml     resolved config          metrics.jsonl  one JSON object per round
    metrics.csv     per-site rows            summary.json   final weighted metrics, rounds, sites
    adapter/        PEFT save_pretrained output + labels.json
    plots/          accuracy.png, loss.png   (written at the end)

Every file is written to a temporary name and renamed, so a crash never leaves half a file."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from pathlib import Path

from common.atomic import PUBLIC, atomic_write_bytes, atomic_write_text
from common.config import RunConfig
from common.metrics import weighted_mean
from common.plots import metric_per_round
from server.roundlog import RoundLog
from server.tracking import Trackers, announce
from server.worst import across_sites, describe_site, describe_spread, joining

HEADLINE = ("accuracy", "macro_f1", "loss", "mae", "rmse")


def _weighted(per_site: dict[str, dict[str, float]]) -> dict[str, float]:
    rows = [m for m in per_site.values()]
    weights = [m.get("num-examples", 0.0) for m in rows]
    out = weighted_mean([{k: v for k, v in m.items() if k != "num-examples"} for m in rows], weights)
    return {k: v for k, v in out.items() if not math.isnan(v)}


class RunDir:
    """Writes one run's directory; the coordinator owns it."""

    def __init__(self, path: str | Path, cfg: RunConfig):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        self.t0 = time.time()
        self.history: list[dict] = []
        atomic_write_text(self.path / "config.toml", f"# config hash {cfg.hash()}\n" + cfg.to_toml())
        announce(self.path)  # the coordinator's status page and /metrics find it
        self.trackers = Trackers(cfg, self.path)  # output.mlflow / output.tensorboard

    def record_round(self, log: RoundLog) -> dict:
        """Append one round to metrics.jsonl / metrics.csv and return the row."""
        row = {
            "round": log.round,
            "elapsed_s": round(time.time() - self.t0, 2),
            "round_s": round(time.time() - log.started, 2),
            "sites_trained": sorted(log.train),
            "failures": log.failures,
            "rejected": log.rejected,
            "refused": log.refused,  # site -> phases it refused (by the replies' error codes)
            "train": _weighted(log.train),
            "evaluate": _weighted(log.evaluate) if log.evaluate else {},
            "per_site": {s: {"train": log.train.get(s, {}), "evaluate": log.evaluate.get(s, {}),
                             "upload_bytes": log.upload_bytes.get(s, 0)}
                         for s in sorted(set(log.train) | set(log.evaluate))},
            "upload_bytes": sum(log.upload_bytes.values()),
        }
        # per metric: min / max over sites with their names, spread, worst; joining's gain per site
        row["worst_site"] = across_sites(log.evaluate, row["evaluate"]) if log.evaluate else {}
        row["joining"] = joining(log.evaluate) if log.evaluate else {}
        self.history.append(row)
        atomic_write_text(self.path / "metrics.jsonl",
                          "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.history))
        self._write_csv()
        self.trackers.log_round(row)
        return row

    def _write_csv(self) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["round", "site", "phase", "metric", "value"])
        for r in self.history:
            for site, phases in r["per_site"].items():
                for phase in ("train", "evaluate"):
                    for k, v in sorted(phases[phase].items()):
                        writer.writerow([r["round"], site, phase, k, v])
            for k, v in sorted(r["evaluate"].items()):
                writer.writerow([r["round"], "weighted", "evaluate", k, v])
        atomic_write_text(self.path / "metrics.csv", buf.getvalue())

    def write_summary(self, extra: dict) -> dict:
        """summary.json: the metrics of the round whose adapter is the result (extra["final_round"],
        e.g. early stopping's best; else the last evaluated round)."""
        final = extra.get("final_round")
        rows = [r for r in self.history if r["evaluate"] and (final is None or r["round"] <= final)]
        last_eval = rows[-1] if rows else None
        summary = {
            "rounds": len(self.history),
            "sites": sorted({s for r in self.history for s in r["per_site"]}),
            "wall_s": round(time.time() - self.t0, 1),
            "config_hash": self.cfg.hash(),
            **(last_eval["evaluate"] if last_eval else {}),
            "per_site": {s: v["evaluate"] for s, v in (last_eval or {"per_site": {}})["per_site"].items()},
            "worst_site": (last_eval or {}).get("worst_site", {}),
            "joining": (last_eval or {}).get("joining", {}),
            **extra,
        }
        atomic_write_text(self.path / "summary.json", json.dumps(summary, indent=1, sort_keys=True))
        self.trackers.finish(summary)  # after adapter/ and summary.json: logged as artifacts
        return summary

    def privacy_summary(self) -> dict[str, dict[str, float]]:
        """Last reported (epsilon, delta, budget) per site, and the rounds each site refused."""
        out: dict[str, dict] = {}
        for r in self.history:
            for site, v in r["per_site"].items():
                if "epsilon" in v["train"]:
                    out[site] = {k: v["train"][k] for k in ("epsilon", "delta", "epsilon_budget")
                                 if k in v["train"]}
                    if "privacy_unit_person" in v["train"]:  # what the epsilon protects
                        out[site]["unit"] = "person" if v["train"]["privacy_unit_person"] >= 0.5 else "record"
            for site in r["refused"]:  # its train and evaluate refusals count as one round
                out.setdefault(site, {}).setdefault("refused_rounds", []).append(r["round"])
        return out

    def write_plots(self) -> str:
        """plots/<metric>.png per round (weighted and per site). A failure is said on the terminal
        with its fix and returned ("" when written): the run's results stand without plots."""
        rows = [r for r in self.history if r["evaluate"]]
        try:
            for metric in ("accuracy", "macro_f1", "loss", "rmse"):
                if rows and metric in rows[-1]["evaluate"]:
                    atomic_write_bytes(self.path / "plots" / f"{metric}.png",
                                       metric_per_round(rows, metric), mode=PUBLIC)
        except ImportError as err:
            problem = f"matplotlib cannot be imported ({err}); fix: pip install matplotlib"
        except Exception as err:  # noqa: BLE001 - plots are a view; metrics.jsonl has the numbers
            problem = f"{type(err).__name__}: {err}"
        else:
            return ""
        problem = f"plots not written to {self.path / 'plots'}: {problem}"
        print(f"fedtune: WARNING {problem}", flush=True)
        return problem


ROUND_LINE = re.compile(r"^round +\d+/\d+ \| ")  # how format_round's lines start


def is_round_line(text: str) -> bool:
    """True for a line format_round made: `fedtune simulate` and `fedtune run` show these from the
    coordinator's output (tests/test_round_line.py keeps the two in step)."""
    return ROUND_LINE.match(text.lstrip()) is not None


def format_round(row: dict, *, total_rounds: int) -> str:
    """One concise line per round for the terminal (starts as ROUND_LINE says)."""
    ev = row["evaluate"]
    head = " ".join(f"{k}={ev[k]:.4f}" for k in HEADLINE if k in ev)
    sites = " ".join(describe_site(s, v["evaluate"])
                     + (f" eps={v['train']['epsilon']:.2f}" if "epsilon" in v["train"] else "")
                     for s, v in row["per_site"].items() if v["evaluate"])
    spread = describe_spread(row.get("worst_site", {}), HEADLINE)
    loss = row["train"].get("train_loss")
    parts = [f"round {row['round']:>3}/{total_rounds}", f"{row['round_s']:6.1f}s",
             f"sites {len(row['sites_trained'])}",
             f"train_loss={loss:.4f}" if loss is not None else "train_loss=-", head or "(no eval)"]
    if sites:
        parts.append(f"[{sites}]")
    if spread:
        parts.append(spread)
    if row["failures"]:
        parts.append(f"FAILED: {'; '.join(row['failures'])}")
    if row.get("rejected"):
        parts.append("REJECTED: " + "; ".join(f"{s}: {r}" for s, r in row["rejected"].items()))
    return " | ".join(parts)
