"""Prometheus metrics (prometheus-client): aggregate counters only, never data values, paths or
row counts.

- Coordinator (`RunsCollector`): computed at each scrape from the run directories' round records
  (metrics.jsonl) — the same source as the status page and the terminal line. The ServerApp runs
  in a process the SuperLink starts per run, so counting inside it would reset with every run and
  need a port per run; reading the round record from the `fedtune coordinator start` process keeps
  one endpoint and one source. Sites connected comes from the SuperLink's own state database
  (read-only).
- Site (`SiteMetrics`): messages served by type and error codes, counted by the site runtime
  (client/runtime.py) as it handles each task, and epsilon spent / budget read from the site's
  privacy ledger after each task (the ledger is locked while a round trains, so never at scrape)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

from fedtune.status.model import events, read_rows, reason_class


class RunsCollector:
    """Metric families of every run `runs()` names ({run id: run directory})."""

    def __init__(self, runs: Callable[[], dict[str, Path]], *, state_db: Path | None = None):
        self.runs, self.state_db = runs, state_db

    def collect(self):
        rounds = CounterMetricFamily("fedtune_rounds_completed", "Rounds recorded in the run's "
                                     "metrics.jsonl", labels=["run"])
        duration = SummaryMetricFamily("fedtune_round_duration_seconds", "Wall time of each "
                                       "recorded round", labels=["run"])
        last = GaugeMetricFamily("fedtune_round_last", "Number of the run's latest recorded round",
                                 labels=["run"])
        sites = GaugeMetricFamily("fedtune_sites_last_round", "Sites whose update was accepted in "
                                  "the run's latest round", labels=["run"])
        replies = CounterMetricFamily("fedtune_replies", "Site replies by outcome (accepted, "
                                      "rejected, refused, failed) and reason class",
                                      labels=["run", "outcome", "reason"])
        received = CounterMetricFamily("fedtune_bytes_received", "Update bytes received from sites "
                                       "(as they crossed the wire)", labels=["run"])
        for run, path in self.runs().items():
            rows = read_rows(path)
            rounds.add_metric([run], len(rows))
            duration.add_metric([run], len(rows), sum(float(r.get("round_s", 0) or 0) for r in rows))
            last.add_metric([run], rows[-1]["round"] if rows else 0)
            sites.add_metric([run], len(rows[-1].get("sites_trained", [])) if rows else 0)
            received.add_metric([run], sum(int(r.get("upload_bytes", 0) or 0) for r in rows))
            counts: dict[tuple[str, str], int] = {("accepted", ""): sum(
                len(r.get("sites_trained", [])) for r in rows)}
            for e in events(rows):
                key = (e["kind"], reason_class(e["reason"]))
                counts[key] = counts.get(key, 0) + 1
            for (outcome, reason), n in sorted(counts.items()):
                replies.add_metric([run, outcome, reason], n)
        yield from (rounds, duration, last, sites, replies, received)
        connected = self._connected()
        if connected is not None:
            yield GaugeMetricFamily("fedtune_sites_connected", "Sites (SuperNodes) the coordinator "
                                    "sees online now", value=connected)

    def _connected(self) -> int | None:
        """Online nodes in the SuperLink's SQLite state (Flower 1.42 table `node`), read-only."""
        if self.state_db is None or not Path(self.state_db).is_file():
            return None
        try:
            con = sqlite3.connect(f"file:{self.state_db}?mode=ro", uri=True, timeout=1)
            try:
                (n,) = con.execute("SELECT COUNT(*) FROM node WHERE status = 'online' AND "
                                   "online_until > ?", (time.time(),)).fetchone()
            finally:
                con.close()
        except sqlite3.Error:
            return None
        return int(n)


def runs_metrics(runs: Callable[[], dict[str, Path]], *, state_db: Path | None = None
                 ) -> Callable[[], bytes]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunsCollector(runs, state_db=state_db))
    return lambda: generate_latest(registry)


class SiteMetrics:
    """A site's counters; `observe` is the runtime's hook (one call per task it handled)."""

    def __init__(self, site_dir: Path | None = None):
        self.site_dir = site_dir
        self.registry = CollectorRegistry(auto_describe=True)
        self.messages = Counter("fedtune_site_messages", "Messages (tasks) served, by type",
                                ["type"], registry=self.registry)
        self.errors = Counter("fedtune_site_errors", "Error replies sent, by fedtune error code "
                              "(451 refused, 456 config, 457 data, 459 bundle, ...; 'task' = the "
                              "task itself failed outside the ClientApp)", ["code"],
                              registry=self.registry)
        self.epsilon = Gauge("fedtune_site_epsilon_spent", "Privacy budget spent by this site's "
                             "ledger lineage (DP-SGD)", registry=self.registry)
        self.budget = Gauge("fedtune_site_epsilon_budget", "The lineage's lifetime epsilon cap "
                            "(0 = none set)", registry=self.registry)
        self._lock = threading.Lock()
        self.refresh_ledger()

    def observe(self, message_type: str, *, error_code: int | str | None = None) -> None:
        """Count one handled task; refresh epsilon (the round's ledger lock is released by now)."""
        with self._lock:
            self.messages.labels(type=str(message_type or "unknown")).inc()
            if error_code is not None:
                self.errors.labels(code=str(error_code)).inc()
        self.refresh_ledger()

    def refresh_ledger(self) -> None:
        if self.site_dir is None:
            return
        from client.ledger import LedgerCorrupt
        from client.ledger_admin import open_ledger

        try:
            ledger = open_ledger(self.site_dir)
            spent, budget = ledger.spent(), ledger.budget
        except (FileNotFoundError, LedgerCorrupt, KeyError, ValueError):
            return  # no DP run yet (or the operator must look at the ledger: `fedtune ledger`)
        self.epsilon.set(spent)
        self.budget.set(budget or 0.0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
