"""Issue #15 scenarios 5 and 6: site keys are made at the site and guarded; --insecure is loopback-only."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from common.errors import ConfigError
from fedtune.ops import is_loopback
from fedtune.ops.certs import make_certs
from fedtune.ops.keys import PASSPHRASE_ENV, keygen, load_site_key, ssh_fingerprint


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---- scenario 5 ----------------------------------------------------------------------------------
def test_keygen_at_the_site_and_certs_takes_only_public_keys(tmp_path):
    key, pub = keygen(name="bank-a", out=tmp_path / "site")
    assert _mode(key) == 0o600 and _mode(pub) == 0o644
    pubs = tmp_path / "pubs"
    pubs.mkdir()
    (pubs / "bank-a.pub").write_bytes(pub.read_bytes())
    rep = make_certs(tmp_path / "certs", sites=["bank-a"], site_keys=pubs)
    assert (tmp_path / "certs/coordinator/sites/bank-a.pub").read_bytes() == pub.read_bytes()
    assert not [p for p in (tmp_path / "certs").rglob("*.key") if p.name == "bank-a.key"]
    assert not rep.site_keys_made_here
    assert ssh_fingerprint(pub.read_text()).startswith("SHA256:")
    with pytest.raises(ConfigError, match="fedtune site keygen"):
        make_certs(tmp_path / "certs", sites=["bank-a", "bank-b"], site_keys=pubs)
    with pytest.raises(ConfigError, match="--force"):
        keygen(name="bank-a", out=tmp_path / "site")


def test_private_key_readable_by_others_is_refused(tmp_path):
    key, _ = keygen(name="a", out=tmp_path)
    key.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_site_key(key, site_dir=tmp_path / "sd")
    key.chmod(0o600)
    assert load_site_key(key, site_dir=tmp_path / "sd") == key


def test_encrypted_key_needs_its_passphrase_and_flower_gets_a_0600_copy(tmp_path, monkeypatch):
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    key, _ = keygen(name="a", out=tmp_path, secret=b"correct horse")
    with pytest.raises((TypeError, ValueError)):  # what Flower's flower-supernode does with it
        load_ssh_private_key(key.read_bytes(), password=None)
    with pytest.raises(ConfigError, match=PASSPHRASE_ENV):
        load_site_key(key, site_dir=tmp_path / "sd")
    monkeypatch.setenv(PASSPHRASE_ENV, "wrong")
    with pytest.raises(ConfigError, match="wrong passphrase"):
        load_site_key(key, site_dir=tmp_path / "sd")
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse")
    plain = load_site_key(key, site_dir=tmp_path / "sd")
    assert plain.parent == tmp_path / "sd" and _mode(plain) == 0o600
    load_ssh_private_key(plain.read_bytes(), password=None)  # Flower can read the copy


def test_cli_site_keygen(tmp_path, capsys):
    from fedtune.cli import main

    assert main(["site", "keygen", "--name", "hosp-c", "--out", str(tmp_path)]) == 0
    assert "send ONLY the .pub" in capsys.readouterr().out
    assert (tmp_path / "hosp-c.key").is_file() and (tmp_path / "hosp-c.pub").is_file()


# ---- scenario 6 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("host,ok", [("127.0.0.1", True), ("127.9.9.9", True), ("::1", True),
                                     ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                     ("10.0.0.5", False), ("coord.example.org", False), ("::", False)])
def test_is_loopback(host, ok):
    assert is_loopback(host) is ok


def test_insecure_coordinator_refused_off_loopback(tmp_path):
    from fedtune.ops.coordinator import start

    with pytest.raises(ConfigError, match="--insecure.*127.0.0.1"):
        start(certs=None, host="0.0.0.0", port=1, state=tmp_path / "s.db", insecure=True)


def test_insecure_site_refused_off_loopback(tmp_path):
    from fedtune.ops.site import start

    data = tmp_path / "d.csv"
    data.write_text("text,label\na,b\n")
    with pytest.raises(ConfigError, match="--insecure"):
        start(coordinator="10.0.0.5:9443", ca=None, key=None, data=data, site_dir=tmp_path / "s",
              name="a", insecure=True)
    assert not (tmp_path / "s").exists()  # refused before anything was written or started


def test_insecure_run_and_enroll_refused_off_loopback(tmp_path):
    from common.config import resolve
    from fedtune.ops.enroll import enroll
    from fedtune.ops.keys import keygen as kg
    from fedtune.ops.submit import submit

    with pytest.raises(ConfigError, match="--insecure"):
        submit(resolve(None, []), coordinator="coord.example.org:9443", ca=None, insecure=True)
    _, pub = kg(name="a", out=tmp_path)
    with pytest.raises(ConfigError, match="--insecure"):
        enroll(certs=None, public_key=pub, coordinator="10.0.0.5:9443", insecure=True)
