"""The live status page in headless Chromium: on a running 2-site tiny simulation (new rounds
appear without a reload, the page ends as "finished") and on the finished run served by
`fedtune report --serve`; the trackers of the same run hold what metrics.jsonl says."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from common.errors import ConfigError
from fedtune.status.model import events, reason_class, run_status
from fedtune.status.server import StatusServer
from tests import chromium
from tests.conftest import make_texts
from tests.simhelp import sim_args, start, stop, wait_for

NO_CHROMIUM = "chromium is not installed: `apt-get install chromium` (bash run.sh setup does it as root)"
ROWS = "[...document.querySelectorAll('#rounds tr[data-round]')].map(r => +r.dataset.round)"


ENV = {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_model_dir):
    if chromium.find() is None:
        pytest.skip(NO_CHROMIUM)
    import pandas as pd

    tmp = tmp_path_factory.mktemp("status")
    texts, labels = make_texts(240, 4)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp / "pooled.csv", index=False)
    out, log = tmp / "run", tmp / "simulate.out"
    sets = [f"model.base={tiny_model_dir}", f"simulation.data={tmp / 'pooled.csv'}", "simulation.sites=2",
            "simulation.partition=iid", "federation.rounds=3", "model.max-length=32",
            "privacy.dp=true", "privacy.epsilon=2", "privacy.budget=10", "train.learning-rate=0.01",
            "output.mlflow=local", "output.tensorboard=true"]
    proc = start(*sim_args(out, sets, "--status-port", "0"), log=log, extra_env=ENV)
    browser = None
    try:
        url = wait_for(log, proc, r"status page (http://127\.0\.0\.1:\d+/)")
        browser = chromium.Browser()
        browser.open(url)
        yield {"proc": proc, "url": url, "browser": browser, "out": out, "log": log, "tmp": tmp}
    finally:
        if browser is not None:
            browser.close()
        stop(proc)


@pytest.mark.slow
def test_new_rounds_appear_without_a_reload(live):
    b = live["browser"]
    b.wait("document.body.dataset.state", 60)  # the page rendered once, before any round
    b.eval("window.__loaded_once = 'yes'")  # a reload would drop it
    seen = []
    while len(seen) < 3:
        rounds = b.wait(f"{ROWS}.length > {len(seen)} && {ROWS}", 600)
        assert rounds[:len(seen)] == seen and len(rounds) > len(seen), rounds
        assert b.eval("window.__loaded_once") == "yes", "the page was reloaded"
        if not seen:
            shot = b.screenshot(live["tmp"] / "status-live.png")
            assert shot.stat().st_size > 20_000
        seen = rounds
    assert seen == [1, 2, 3]
    assert live["proc"].wait(timeout=600) == 0, live["log"].read_text()[-3000:]
    b.wait("document.body.dataset.state === 'finished'", 30)
    assert b.eval("window.__loaded_once") == "yes"
    target = os.environ.get("FEDTUNE_STATUS_SCREENSHOT")  # docs/status.png is made this way
    b.screenshot(Path(target) if target else live["tmp"] / "status-finished.png")


@pytest.mark.slow
def test_page_shows_what_the_round_record_says(live):
    assert live["proc"].wait(timeout=600) == 0
    b, out = live["browser"], live["out"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    b.wait("document.body.dataset.state === 'finished'", 30)
    assert b.eval(ROWS) == [r["round"] for r in rows]
    sites = b.eval("[...document.querySelectorAll('#sites tr[data-site]')].map(r => "
                   "[...r.children].map(td => td.textContent))")
    assert [s[0] for s in sites] == ["site-0", "site-1"]
    header = b.eval("[...document.querySelectorAll('#sites th')].map(th => th.textContent)")
    for cells in sites:
        eps = rows[-1]["per_site"][cells[0]]["train"]["epsilon"]
        assert float(cells[header.index("ε spent")]) == pytest.approx(eps, rel=1e-3)
        assert float(cells[header.index("ε budget")]) == pytest.approx(10.0)
        assert cells[header.index("budget used")].strip().endswith("%")
    text = b.eval("document.body.innerText")
    assert "round 3 of 3" in text and "DP-SGD at every site" in text
    assert b.eval("document.querySelectorAll('#plots svg polyline').length") >= 3  # inline SVG plots
    assert b.eval("[...document.scripts].every(s => s.src.startsWith(location.origin))")  # no CDN


@pytest.mark.slow
def test_trackers_follow_the_live_run(live):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert live["proc"].wait(timeout=600) == 0
    out = live["out"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ids = json.loads((out / "mlflow-run.json").read_text())
    client = MlflowClient(tracking_uri=ids["tracking_uri"])
    acc = sorted(client.get_metric_history(ids["run_id"], "evaluate/accuracy"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in acc] == [(r["round"], pytest.approx(r["evaluate"]["accuracy"]))
                                                for r in rows]
    eps = sorted(client.get_metric_history(ids["run_id"], "site/site-0/epsilon"), key=lambda m: m.step)
    assert [m.value for m in eps] == pytest.approx([r["per_site"]["site-0"]["train"]["epsilon"] for r in rows])
    assert {a.path for a in client.list_artifacts(ids["run_id"], "adapter")} >= {
        "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/labels.json"}
    assert client.get_run(ids["run_id"]).data.params["privacy.dp"] == "True"
    ea = EventAccumulator(str(out / "tensorboard"))
    ea.Reload()
    assert [e.step for e in ea.Scalars("site/site-1/epsilon")] == [1, 2, 3]


@pytest.mark.slow
def test_finished_run_served_by_report(live):
    from prometheus_client.parser import text_string_to_metric_families

    assert live["proc"].wait(timeout=600) == 0
    out, tmp = live["out"], live["tmp"]
    log = tmp / "serve.out"
    proc = start("report", "--serve", str(out), "--status-port", "0", log=log, extra_env=ENV)
    b = chromium.Browser()
    try:
        url = wait_for(log, proc, r"status page of .*: (http://127\.0\.0\.1:\d+/)", timeout=60)
        b.open(url)
        b.wait("document.body.dataset.state === 'finished'", 60)
        assert b.eval(ROWS) == [1, 2, 3]
        b.screenshot(tmp / "status-report.png")
        with urllib.request.urlopen(url + "api/status") as resp:
            served = json.loads(resp.read())
        assert served["rounds"] == json.loads(json.dumps(run_status(out)))["rounds"]
        req = urllib.request.Request(url + "api/status", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req)
        assert err.value.code == 405  # read-only
        with urllib.request.urlopen(url + "metrics") as resp:
            families = {f.name: f for f in text_string_to_metric_families(resp.read().decode())}
        assert families["fedtune_rounds_completed"].samples[0].value == 3
    finally:
        b.close()
        stop(proc)
    assert proc.returncode in (0, 143, -15)


def test_network_bind_needs_a_token_or_tls(tmp_path):
    with pytest.raises(ConfigError, match="token"):
        StatusServer(runs=dict, host="0.0.0.0")
    page = StatusServer(runs=lambda: {}, token="x" * 24).start()  # loopback, token required anyway
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(page.url + "api/runs")
        assert err.value.code == 401
        req = urllib.request.Request(page.url + "api/runs", headers={"Authorization": "Bearer " + "x" * 24})
        with urllib.request.urlopen(req) as resp:
            assert json.loads(resp.read()) == []
    finally:
        page.stop()


def test_round_record_to_status_fields(tmp_path):
    """ETA, failures, refusals and rejections as the page shows them, from a real RunDir."""
    from common.config import RunConfig
    from server.rundir import RunDir
    from server.roundlog import RoundLog

    run = RunDir(tmp_path / "run", RunConfig())  # federation.rounds = 3
    log = RoundLog(round=1)
    log.train["a"] = {"num-examples": 10.0, "epsilon": 1.0, "epsilon_budget": 4.0}
    log.evaluate["a"] = {"num-examples": 5.0, "accuracy": 0.5}
    log.failures += ["b refused: privacy budget of site b would be exceeded",
                     "c (train): the site could not read its data (code 457)",
                     "a (evaluate): rejected at the coordinator: metric 'x' is not finite"]
    log.rejected["d"] = "update norm 81.2 is 12.0x the median 6.7"
    log.refused["b"] = ["train"]  # b's reply carried a refusal code (server/roundlog.py note_error)
    run.record_round(log)
    st = run_status(run.path)
    assert st["state"] == "running" and st["round"] == 1 and st["total_rounds"] == 3
    assert st["eta_s"] == pytest.approx(2 * st["rounds"][0]["round_s"])
    kinds = {(e["site"], e["kind"]) for e in events([json.loads((run.path / "metrics.jsonl").read_text())])}
    assert kinds == {("b", "refused"), ("c", "failed"), ("a", "rejected"), ("d", "rejected")}
    assert st["sites"]["a"]["epsilon"] == 1.0 and st["sites"]["a"]["epsilon_budget"] == 4.0
    assert st["sites"]["b"]["refused"] == 1 and st["sites"]["d"]["rejected"] == 1
    assert reason_class("update norm 81.2 is 12.0x the median 6.7") == "update norm N is Nx the median N"
    assert reason_class("metric 'secret_col' is not finite") == "metric '…' is not finite"
    run.write_summary({})
    assert run_status(run.path)["state"] == "finished" and run_status(run.path)["eta_s"] is None


def test_tls_status_page(tmp_path):
    """--status-cert/--status-key: the page over HTTPS, verified against the certificate."""
    import datetime
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedtune-status")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    page = StatusServer(runs=lambda: {}, cert=tmp_path / "c.pem", key=tmp_path / "k.pem").start()
    try:
        assert page.url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(tmp_path / "c.pem"))
        with urllib.request.urlopen(page.url, context=ctx, timeout=10) as resp:
            assert b"page.js" in resp.read() and "script-src 'self'" in resp.headers["Content-Security-Policy"]
    finally:
        page.stop()
    with pytest.raises(ConfigError, match="both"):
        StatusServer(runs=dict, cert=tmp_path / "c.pem")
