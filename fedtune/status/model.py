"""What the status page and the coordinator's /metrics show, computed from a run directory only:
metrics.jsonl (one round record per line, written by server/rundir.py), config.toml and, once the
run has ended, summary.json. Nothing here talks to Flower or to a site."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from common.config import load_toml

HEADLINE = ("accuracy", "macro_f1", "auc_roc", "loss", "rmse", "mae", "r2", "perplexity")


def read_rows(run_dir: Path) -> list[dict]:
    """The round records so far ([] before the first round); a torn or unreadable line is
    skipped (the file is replaced atomically, so one is never half written by fedtune)."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("round"), int):
            rows.append(row)
    return rows


def _json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def reason_class(text: str) -> str:
    """A short, bounded label for a failure or rejection reason (Prometheus label values): the
    first clause, numbers as N, quoted names as '…', at most 60 characters."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", str(text).lower())
    text = re.sub(r"\d+(\.\d+)?(e-?\d+)?", "N", text)
    text = re.split(r"[;:(\n]", text.strip(), maxsplit=1)[0].strip()
    return text[:60] or "unknown"


def split_failure(failure: str, refused: dict[str, list[str]] | None = None) -> tuple[str, str, str]:
    """(site, kind, reason) of one entry of a round record's `failures`: kind is "refused" (the
    site declined by its own rule: the record's `refused`, kept by error code), "rejected" (the
    coordinator's check of an evaluate reply) or "failed" (an error reply or a timeout). Records
    written before `refused` existed (refused=None) are read by their text."""
    if " refused: " in failure and "): " not in failure.split(" refused: ", 1)[0]:
        site, reason = failure.split(" refused: ", 1)  # "<site> refused: <reason>"
        return site, "refused" if refused is None or site in refused else "failed", reason
    site, _, reason = failure.partition(": ")
    site = site.split(" (", 1)[0]
    if reason.startswith("rejected at the coordinator: "):
        return site, "rejected", reason.split(": ", 1)[1]
    if refused is not None:
        return (site, "refused", reason.split("refused: ", 1)[-1]) if site in refused else \
            (site, "failed", reason)
    if " refused: " in reason or reason.startswith("refused"):
        return site, "refused", reason.split("refused: ", 1)[-1]
    return site, "failed", reason


def events(rows: list[dict]) -> list[dict[str, Any]]:
    """Every failure, refusal and rejected update, oldest first: {round, site, kind, reason}."""
    out = []
    for row in rows:
        for failure in row.get("failures", []):
            site, kind, reason = split_failure(str(failure), row.get("refused"))
            out.append({"round": row["round"], "site": site, "kind": kind, "reason": reason})
        for site, reason in sorted(row.get("rejected", {}).items()):
            out.append({"round": row["round"], "site": site, "kind": "rejected", "reason": str(reason)})
    return out


def _sites(rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Per site: last train/eval metrics, epsilon against budget, bytes and seconds in total."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        for site, per in row.get("per_site", {}).items():
            s = out.setdefault(site, {"rounds": 0, "upload_bytes": 0, "train_seconds": 0.0,
                                      "eval_seconds": 0.0, "evaluate": {}, "train": {}})
            train, ev = per.get("train", {}), per.get("evaluate", {})
            if train:
                s["rounds"] += 1
                s["train"] = train
            if ev:
                s["evaluate"] = ev
            s["upload_bytes"] += int(per.get("upload_bytes", 0) or 0)
            s["train_seconds"] += float(train.get("train_seconds", 0.0) or 0.0)
            s["eval_seconds"] += float(ev.get("eval_seconds", 0.0) or 0.0)
            for key in ("epsilon", "epsilon_budget", "delta"):
                if key in train:
                    s[key] = train[key]
    for e in events(rows):
        s = out.setdefault(e["site"], {"rounds": 0, "upload_bytes": 0, "train_seconds": 0.0,
                                       "eval_seconds": 0.0, "evaluate": {}, "train": {}})
        s[e["kind"]] = s.get(e["kind"], 0) + 1
    return out


def run_status(run_dir: str | Path) -> dict[str, Any]:
    """The whole state of one run, as the page renders it (JSON-serialisable)."""
    run = Path(run_dir)
    rows = read_rows(run)
    flat = load_toml(run / "config.toml") if (run / "config.toml").is_file() else {}
    summary = _json(run / "summary.json")
    total = int(flat.get("federation.rounds", 0) or 0) or (rows[-1]["round"] if rows else 0)
    done = rows[-1]["round"] if rows else 0
    finished = bool(summary)
    durations = [float(r.get("round_s", 0.0) or 0.0) for r in rows]
    eta = None
    if rows and not finished and total > done:
        recent = durations[-3:]
        eta = round(sum(recent) / len(recent) * (total - done), 1)
    metrics = [m for m in HEADLINE if any(m in r.get("evaluate", {}) for r in rows)]
    return {
        "run": run.resolve().name,
        "state": "finished" if finished else ("running" if rows else "starting"),
        "round": done,
        "total_rounds": total,
        "eta_s": eta,
        "elapsed_s": summary.get("wall_s", rows[-1].get("elapsed_s") if rows else 0),
        "task": flat.get("task.type", ""),
        "strategy": flat.get("federation.strategy", ""),
        "dp": bool(flat.get("privacy.dp", False)),
        "metrics": metrics,
        "rounds": [{"round": r["round"], "round_s": r.get("round_s"), "elapsed_s": r.get("elapsed_s"),
                    "sites_trained": r.get("sites_trained", []), "train": r.get("train", {}),
                    "evaluate": r.get("evaluate", {}), "upload_bytes": r.get("upload_bytes", 0),
                    "per_site": r.get("per_site", {}), "failures": len(r.get("failures", [])),
                    "rejected": len(r.get("rejected", {}))} for r in rows],
        "sites": _sites(rows),
        "events": events(rows),
        "summary": {k: v for k, v in summary.items() if isinstance(v, (int, float, str))},
    }
