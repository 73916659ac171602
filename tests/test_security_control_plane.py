"""Issue #15 scenario 1 on a real TLS coordinator (nginx + SuperLink) on loopback.

127.0.0.2 plays the coordinator's public address; 127.0.0.1 is its loopback. Mallory holds
everything a site holds (ca.crt, a key pair of her own, the public address): she cannot register a
node, submit, list or stop runs, or reach the runtime API. The operator on the coordinator host can
(127.0.0.1), and a real site still connects through the public address (Fleet API only)."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fedtune.flower import free_port
from fedtune.ops import write_connection
from fedtune.ops.proxy import find_nginx
from tests.simhelp import ROOT, Federation

pytestmark = pytest.mark.slow  # real federations (deselect with -m "not slow")

PUBLIC = "127.0.0.2"


def _nginx_or_skip() -> None:
    try:
        find_nginx()
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"{err} (./run.sh setup installs it)")


@pytest.fixture(scope="module")
def coord(tmp_path_factory, tiny_model_dir):
    _nginx_or_skip()
    import pandas as pd

    from tests.conftest import make_texts

    tmp = tmp_path_factory.mktemp("ctrl")
    f = Federation(tmp, tiny_model_dir)
    f.public = f"{PUBLIC}:{f.port}"
    try:
        for name in ("a", "mallory"):  # keys made where they are used; only .pub travels
            made = f.cli("site", "keygen", "--name", name, "--out", str(tmp / f"keys-{name}"))
            assert made.returncode == 0 and "send ONLY the .pub" in made.stdout, made.stderr
        pubs = tmp / "pubs"
        pubs.mkdir()
        (pubs / "a.pub").write_bytes((tmp / "keys-a/a.pub").read_bytes())
        made = f.cli("certs", "--out", str(tmp / "certs"), "--sites", "a", "--site-keys", str(pubs),
                     "--san", PUBLIC)
        assert made.returncode == 0, made.stderr
        assert not list((tmp / "certs").rglob("a.key"))  # no site private key made here
        texts, labels = make_texts(40, 4)
        pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp / "data-a.csv", index=False)
        f.spawn("coordinator", "coordinator", "start", "--certs", str(tmp / "certs/coordinator"),
                "--host", PUBLIC, "--port", str(f.port), "--state", str(tmp / "coord/state.db"))
        f.wait_for("coordinator", "coordinator listening", 90)
        yield f
    finally:
        f.stop()


def _https(url: str, ca: Path, body: bytes = b"") -> int:
    ctx = ssl.create_default_context(cafile=str(ca))
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/protobuf"})
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:  # noqa: S310
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def _flwr(coord, address: str, *args: str, home: str) -> subprocess.CompletedProcess:
    flwr_home = coord.tmp / home
    write_connection(flwr_home, address=address, ca=coord.tmp / "certs/site-a/ca.crt")
    env = dict(coord.env, FLWR_HOME=str(flwr_home))
    return subprocess.run([str(Path(sys.executable).parent / "flwr"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("path", ["/v1/control/list-runs", "/v1/control/stop-run",
                                  "/v1/control/start-run", "/v1/control/register-node",
                                  "/v1/runtime/acquire-task", "/docs", "/fedtune/coordinator.json",
                                  "/v1/fleet/../control/list-runs", "/v1/fleet/%2e%2e/control/list-runs"])
def test_public_address_answers_404_outside_fleet(coord, path):
    ca = coord.tmp / "certs/site-a/ca.crt"
    assert _https(f"https://{coord.public}{path}", ca) == 404
    assert _https(f"https://{coord.public}/v1/fleet/pull-messages", ca) not in (404, 502)


def _refused(proc: subprocess.CompletedProcess) -> bool:
    """flwr --format json exits 0 with {"success": false}; the proxy answered 404."""
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return proc.returncode != 0 and "404" in proc.stdout + proc.stderr
    return out.get("success") is False and "404" in out.get("error-message", "")


def test_mallory_cannot_register_list_stop_or_submit(coord):
    pub = coord.tmp / "keys-mallory/mallory.pub"
    for i, args in enumerate([("supernode", "register", str(pub), "fedtune"), ("ls", "fedtune"),
                              ("stop", "1234", "fedtune"), ("supernode", "ls", "fedtune")]):
        proc = _flwr(coord, coord.public, *args, "--format", "json", home=f"m{i}")
        assert _refused(proc), (args, proc.stdout, proc.stderr)
    sub = coord.cli("run", "--coordinator", coord.public, "--ca", str(coord.tmp / "certs/site-a/ca.crt"),
                    "--set", "task.labels=x,y", "--set", f"model.base={coord.tiny}",
                    "--out", str(coord.tmp / "stolen"), timeout=300)
    assert sub.returncode != 0 and not (coord.tmp / "stolen").exists()


def test_operator_enrolls_lists_and_runs_through_loopback(coord):
    """Enrolled as 'alpha' (the registry's name); the site itself claims to be 'a'. A real 1-round
    run through the operator's loopback path: the run records 'alpha', the claim is only logged."""
    loop = f"127.0.0.1:{coord.port}"
    enrolled = coord.cli("coordinator", "enroll", "--certs", str(coord.tmp / "certs/coordinator"),
                         "--public-key", str(coord.tmp / "keys-a/a.pub"), "--site", "alpha",
                         "--max-examples", "500", "--coordinator", loop)
    assert enrolled.returncode == 0 and "enrolled site 'alpha'" in enrolled.stdout, enrolled.stderr
    sites = json.loads((coord.tmp / "coord/sites.json").read_text())["sites"]
    assert [(s["name"], s["max_examples"]) for s in sites] == [("alpha", 500)]
    listed = _flwr(coord, loop, "ls", "fedtune", "--format", "json", home="op")
    assert json.loads(listed.stdout)["success"] is True, listed.stdout + listed.stderr
    coord.spawn("site-a", "site", "start", "--coordinator", coord.public,
                "--ca", str(coord.tmp / "certs/site-a/ca.crt"), "--key", str(coord.tmp / "keys-a/a.key"),
                "--data", str(coord.tmp / "data-a.csv"), "--site-dir", str(coord.tmp / "site-a"),
                "--name", "a", "--port", str(free_port()))
    coord.wait_for("site-a", "site a connected to coordinator", 90)  # Fleet via the public address
    assert str(sites[0]["node_id"]) in coord.output("site-a")
    out = coord.tmp / "run"
    run = coord.cli("run", "--coordinator", loop, "--ca", str(coord.tmp / "certs/site-a/ca.crt"),
                    "--out", str(out), "--set", f"model.base={coord.tiny}", "--set", "federation.rounds=1",
                    "--set", "federation.min-sites=1", "--set", "task.labels=intent_0,intent_1,intent_2,intent_3",
                    "--set", "model.max-length=32", "--set", "train.threads=1", timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert set(row["per_site"]) == {"alpha"}, row["per_site"].keys()
    assert "claims to be 'a'" in run.stdout + coord.output("coordinator")  # logged, not trusted
