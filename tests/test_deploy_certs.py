"""`fedtune certs`: a CA, the coordinator's TLS certificate, site key pairs in Flower's format."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (load_pem_private_key, load_ssh_private_key,
                                                          load_ssh_public_key)

from common.errors import ConfigError
from fedtune.ops.certs import cert_sans, make_certs, parse_sites
from fedtune.cli import main
from tests import simhelp

ROOT = Path(__file__).resolve().parents[1]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_layout_permissions_and_formats(tmp_path):
    out = tmp_path / "certs"
    rep = make_certs(out, sites=["bank-a", "hosp-b"], sans=["127.0.0.1", "coord.example.org"])
    for private in ("ca/ca.key", "coordinator/coordinator.key", "site-bank-a/bank-a.key",
                    "site-hosp-b/hosp-b.key"):
        assert _mode(out / private) == 0o600, private
    for public in ("coordinator/ca.crt", "coordinator/sites/bank-a.pub", "site-hosp-b/ca.crt"):
        assert _mode(out / public) == 0o644, public
    # loopback names are always in: the operator reaches the Control API on 127.0.0.1
    assert set(cert_sans(out / "coordinator/coordinator.crt")) == {"127.0.0.1", "localhost",
                                                                  "coord.example.org"}
    ca = x509.load_pem_x509_certificate((out / "ca/ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((out / "coordinator/coordinator.crt").read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the chain is broken
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    load_pem_private_key((out / "coordinator/coordinator.key").read_bytes(), password=None)
    # Flower's formats: `--auth-supernode-private-key` = OpenSSH EC private key; register = OpenSSH pub
    priv = load_ssh_private_key((out / "site-bank-a/bank-a.key").read_bytes(), password=None)
    pub = load_ssh_public_key((out / "coordinator/sites/bank-a.pub").read_bytes())
    assert isinstance(priv, ec.EllipticCurvePrivateKey) and priv.curve.name == "secp384r1"
    assert pub.public_numbers() == priv.public_key().public_numbers()
    # each site folder holds only its own private key
    assert sorted(p.name for p in (out / "site-bank-a").iterdir()) == ["bank-a.key", "bank-a.pub", "ca.crt"]
    assert [p.name for p in (out / "coordinator").rglob("*.key")] == ["coordinator.key"]
    assert len(rep.created) > 0 and rep.kept == []


def test_never_overwrites_without_force_and_adds_sites(tmp_path):
    out = tmp_path / "certs"
    make_certs(out, sites=["a"])
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    rep = make_certs(out, sites=["a", "b"])  # adding a site keeps the CA and a's key
    for path, data in before.items():
        assert path.read_bytes() == data, path
    assert (out / "site-b/b.key").is_file() and (out / "coordinator/sites/b.pub").is_file()
    assert out / "site-b/b.key" in rep.created
    with pytest.raises(ConfigError, match="--force"):  # asking for other SANs needs --force
        make_certs(out, sites=["a"], sans=["10.0.0.5"])
    make_certs(out, sites=["a"], sans=["10.0.0.5"], force=True)
    assert (out / "ca/ca.crt").read_bytes() != before[out / "ca/ca.crt"]
    assert set(cert_sans(out / "coordinator/coordinator.crt")) == {
        str(ipaddress.ip_address("10.0.0.5")), "127.0.0.1", "localhost"}


@pytest.mark.parametrize("bad", ["", "a,a", "../x", "a b", "-lead"])
def test_bad_site_names(bad):
    with pytest.raises(ConfigError, match="--sites"):
        parse_sites(bad)


def test_bad_san(tmp_path):
    with pytest.raises(ConfigError, match="--san"):
        make_certs(tmp_path / "c", sites=["a"], sans=["not a host!"])


def test_cli_prints_handout(tmp_path, capsys):
    assert main(["certs", "--out", str(tmp_path / "c"), "--sites", "a,b", "--san",
                 "127.0.0.1,localhost"]) == 0
    text = capsys.readouterr().out
    assert "KEEP OFFLINE" in text and "site a" in text and "fedtune coordinator enroll" in text
    assert main(["certs", "--out", str(tmp_path / "c"), "--sites", "a,a"]) == 2
    assert "error: --sites" in capsys.readouterr().err


def test_ops_help_runs_as_module():
    proc = simhelp.run("--help", timeout=60)
    assert proc.returncode == 0 and "coordinator" in proc.stdout


def test_compose_parses_and_names_the_pieces():
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
    services = compose["services"]
    assert {"coordinator", "bank-a", "bank-b", "hospital-c"} <= set(services)
    assert "--enable-supernode-auth" not in str(services)  # fedtune passes Flower's flags itself
    for name in ("bank-a", "bank-b", "hospital-c"):
        cmd = " ".join(services[name]["command"])
        assert "site start" in cmd and "--ca" in cmd and "--key" in cmd and "--data" in cmd
        assert f"/keys/{name}.key" in cmd and f"./certs/site-{name}:/certs:ro" in services[name]["volumes"]
        assert f"./keys/{name}:/keys:ro" in services[name]["volumes"]  # its own key, made by itself
    assert "coordinator start" in " ".join(services["coordinator"]["command"])
    assert services["coordinator"]["ports"] == ["9443:9443"]
    # the operator reaches Control through the coordinator's loopback, never the published port
    assert services["submit"]["network_mode"] == "service:coordinator"
    assert "127.0.0.1:9443" in services["submit"]["command"]
    assert "--site-keys" in services["certs"]["command"]


def test_run_config_for_deployment(tmp_path):
    from fedtune.ops.submit import resolve_run_config

    (tmp_path / "labels.txt").write_text("card_lost\ncard_arrived\n")
    (tmp_path / "run.toml").write_text('[task]\nlabels = "@labels.txt"\n[federation]\nmin-sites = 5\n')
    cfg = resolve_run_config(str(tmp_path / "run.toml"), ["federation.rounds=2"], out="/srv/runs/x")
    assert cfg.task.labels == "card_lost,card_arrived"  # inlined: the file is not at the sites
    assert cfg.federation.min_sites == 5 and cfg.federation.rounds == 2
    assert cfg.output.run_dir == "/srv/runs/x"
    with pytest.raises(ConfigError, match="task.labels is empty"):
        resolve_run_config(None, [], out=None)
    with pytest.raises(ConfigError, match="unknown config key"):
        resolve_run_config(None, ["federation.roundz=2"], out=None)
    example = resolve_run_config(str(ROOT / "deploy/run.example.toml"), [], out=None)
    assert example.output.run_dir.startswith("runs/run-")


def test_superlink_flags_tls_auth_and_no_uv_sync(tmp_path):
    from fedtune.ops.coordinator import coordinator_files, superlink_command

    make_certs(tmp_path / "c", sites=["a"])
    files = coordinator_files(tmp_path / "c")  # the whole output folder works too
    cmd = superlink_command(files=files, host="0.0.0.0", port=9443, state=tmp_path / "s.db")
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth",
                 "--disable-runtime-dependency-installation", "--database"):
        assert flag in cmd
    assert "--insecure" not in cmd
    insecure = superlink_command(files=None, host="127.0.0.1", port=1, state=tmp_path / "s.db")
    assert "--insecure" in insecure and "--enable-supernode-auth" not in insecure
    with pytest.raises(ConfigError, match="coordinator.crt not found"):
        coordinator_files(tmp_path / "c" / "site-a")


def test_site_exit_messages_name_the_fix():
    from fedtune.ops.site import explain_exit

    kw = dict(name="a", key=Path("/k/a.key"), coordinator="h:1", log=Path("/l"))
    assert "fedtune coordinator enroll" in explain_exit(1, "[code: 2004] Failed to activate SuperNode.", **kw)
    assert "NTP" in explain_exit(1, "Invalid SuperNode authentication", **kw)
    assert "last lines" in explain_exit(3, "something else", **kw)


def test_tls_preflight_against_a_local_tls_server(tmp_path):
    """The pre-flight check that turns Flower's endless retries into one clear error."""
    import socket
    import ssl
    import threading

    from common.errors import FedtuneError
    from fedtune.ops import tls_preflight

    make_certs(tmp_path / "c", sites=["a"])
    make_certs(tmp_path / "other", sites=["x"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c/coordinator/coordinator.crt", tmp_path / "c/coordinator/coordinator.key")
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert tls_preflight("127.0.0.1", port, ca=tmp_path / "c/site-a/ca.crt") == "ok"
        with pytest.raises(FedtuneError, match="does not trust"):
            tls_preflight("127.0.0.1", port, ca=tmp_path / "other/site-x/ca.crt")
        with pytest.raises(FedtuneError, match="drop --insecure"):
            tls_preflight("127.0.0.1", port, ca=None, timeout=2)
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()
    assert tls_preflight("127.0.0.1", port, ca=None) == "unreachable"
