"""Prometheus /metrics on a real coordinator and real sites on loopback (--insecure): scraped and
parsed with prometheus-client's own parser. The coordinator's counters come from its runs' round
records; a site's are its message and error counters and its ledger's epsilon — never data."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fedtune.flower import free_port
from tests.conftest import make_texts
from tests.simhelp import LABELS, Federation

pytestmark = pytest.mark.slow


def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _url(f: Federation, name: str, pattern: str) -> str:
    f.wait_for(name, pattern.split(" ")[0], 90)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(pattern + r" (http://127\.0\.0\.1:\d+/)", f.output(name))
        if found:
            return found.group(1)
        time.sleep(0.3)
    raise AssertionError(f.output(name)[-2000:])


@pytest.fixture(scope="module")
def fed(tmp_path_factory, tiny_model_dir):
    import pandas as pd

    tmp = tmp_path_factory.mktemp("prom")
    f = Federation(tmp, tiny_model_dir)
    try:
        texts, labels = make_texts(240, 4)
        for i, name in enumerate("abc"):
            pd.DataFrame({"text": texts[i::3], "label": labels[i::3]}).to_csv(tmp / f"data-{name}.csv", index=False)
        (tmp / "c-policy.toml").write_text(f'base-model-sha256 = ["{"0" * 64}"]\n')  # c refuses every round
        f.spawn("coordinator", "coordinator", "start", "--insecure", "--port", str(f.port),
                "--state", str(tmp / "coord/state.db"), "--status-port", str(free_port()))
        f.wait_for("coordinator", "coordinator listening", 90)
        f.urls = {"coordinator": _url(f, "coordinator", "coordinator status page")}
        for name in "abc":
            policy = ["--policy", str(tmp / "c-policy.toml")] if name == "c" else []
            f.spawn(f"site-{name}", "site", "start", "--insecure", "--coordinator", f.coordinator,
                    "--data", str(tmp / f"data-{name}.csv"), "--site-dir", str(tmp / f"site-{name}"),
                    "--name", name, "--port", str(free_port()), "--metrics-port", str(free_port()), *policy)
        for name in "abc":
            f.wait_for(f"site-{name}", f"site {name} connected to coordinator", 90)
            f.urls[name] = _url(f, f"site-{name}", r"site metrics \(Prometheus\):")
        yield f
    finally:
        f.stop()


@pytest.fixture(scope="module")
def run(fed):
    before = _scrape(fed.urls["coordinator"] + "metrics")
    out = fed.tmp / "coord" / "runs" / "prom-run"
    proc = fed.cli("run", "--insecure", "--coordinator", fed.coordinator, "--out", "runs/prom-run",
                   "--set", f"model.base={fed.tiny}", "--set", "federation.rounds=2",
                   "--set", "federation.min-sites=2", "--set", f"task.labels={','.join(LABELS)}",
                   "--set", "model.max-length=32", "--set", "train.threads=1",
                   "--set", "federation.round-retries=0", "--set", "privacy.dp=true",
                   "--set", "privacy.epsilon=2", "--set", "privacy.budget=10", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, before


def test_coordinator_metrics_follow_the_round_record(run, fed):
    import json

    out, before = run
    assert (out / "metrics.jsonl").is_file(), list((fed.tmp / "coord").rglob("metrics.jsonl"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    m = _scrape(fed.urls["coordinator"] + "metrics")
    key = (("run", "prom-run"),)
    assert before[("fedtune_sites_connected", ())] == 3
    assert m[("fedtune_sites_connected", ())] == 3
    assert m[("fedtune_rounds_completed_total", key)] == len(rows) == 2
    assert m[("fedtune_round_duration_seconds_count", key)] == 2
    assert m[("fedtune_round_duration_seconds_sum", key)] == pytest.approx(sum(r["round_s"] for r in rows))
    assert m[("fedtune_bytes_received_total", key)] == sum(r["upload_bytes"] for r in rows) > 0
    accepted = (("outcome", "accepted"), ("reason", ""), ("run", "prom-run"))
    assert m[("fedtune_replies_total", accepted)] == 4  # a and b, two rounds
    refused = {k: v for k, v in m.items() if k[0] == "fedtune_replies_total" and ("outcome", "refused") in k[1]}
    assert sum(refused.values()) >= 2, m  # c refuses each round, with a reason class
    assert all(dict(k[1])["reason"] for k in refused)


def test_site_metrics_count_messages_errors_and_epsilon(run, fed):
    from client.ledger_admin import open_ledger

    a = _scrape(fed.urls["a"] + "metrics")
    assert a[("fedtune_site_messages_total", (("type", "train"),))] == 2
    assert a[("fedtune_site_messages_total", (("type", "evaluate"),))] == 2
    spent = open_ledger(fed.tmp / "site-a").spent()
    assert a[("fedtune_site_epsilon_spent", ())] == pytest.approx(spent) and spent > 0
    assert a[("fedtune_site_epsilon_budget", ())] == pytest.approx(10.0)
    assert not any(k[0] == "fedtune_site_errors_total" for k in a)
    c = _scrape(fed.urls["c"] + "metrics")
    assert c[("fedtune_site_errors_total", (("code", "451"),))] >= 2  # REFUSED, by its policy


def test_site_endpoint_carries_no_data(run, fed):
    with urllib.request.urlopen(fed.urls["a"] + "metrics", timeout=10) as resp:
        text = resp.read().decode()
    for secret in (str(fed.tmp), "data-a", "intent_", "card", "site-a"):
        assert secret not in text, secret
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert {n for n in names if n.startswith("fedtune_")} <= {
        "fedtune_site_messages_total", "fedtune_site_messages_created", "fedtune_site_errors_total",
        "fedtune_site_errors_created", "fedtune_site_epsilon_spent", "fedtune_site_epsilon_budget"}
    with pytest.raises(urllib.error.HTTPError) as err:  # a site serves no page, only /metrics
        urllib.request.urlopen(fed.urls["a"], timeout=10)
    assert err.value.code == 404


def test_coordinator_status_page_lists_its_runs(run, fed):
    import json

    with urllib.request.urlopen(fed.urls["coordinator"] + "api/runs", timeout=10) as resp:
        runs = json.loads(resp.read())
    assert [r["id"] for r in runs] == ["prom-run"] and runs[0]["state"] == "finished"
    assert runs[0]["round"] == runs[0]["total_rounds"] == 2
    with urllib.request.urlopen(fed.urls["coordinator"] + "api/status?run=prom-run", timeout=10) as resp:
        st = json.loads(resp.read())
    # an error reply carries no site name: without a registry the coordinator names c by its node
    (other,) = set(st["sites"]) - {"a", "b"}
    assert other.startswith("node-") and st["sites"][other]["refused"] >= 2
    assert st["events"] and all(e["kind"] == "refused" and e["site"] == other for e in st["events"])


def test_every_process_is_reaped(run, fed):
    assert fed.stop() == []
