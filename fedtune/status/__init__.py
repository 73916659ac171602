"""Watching a federation while it runs, and after: a read-only status page (server.py, page.html,
page.js), its data (model.py: everything is read from the run directory, metrics.jsonl being the
source of truth) and Prometheus metrics (prom.py: aggregate counters only)."""
