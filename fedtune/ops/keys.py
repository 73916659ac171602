"""Site node-authentication keys, made AT the site: `fedtune site keygen --name N --out DIR`.

Only `<name>.pub` travels (to whoever runs `fedtune certs --site-keys`, then to the coordinator,
which enrolls it); `<name>.key` never leaves the site. Keys are EC P-384 in OpenSSH format (what
Flower 1.42's `flower-supernode --auth-supernode-private-key` and `flwr supernode register` read).

A private key may be encrypted with a passphrase (from $FEDTUNE_KEY_PASSPHRASE, or the file named
by $FEDTUNE_KEY_PASSPHRASE_FILE / --passphrase-file); it is then written as encrypted PKCS#8 PEM
(OpenSSH's own key encryption needs the bcrypt package). Flower loads the key with `password=None`
(flwr/supernode/cli/flower_supernode.py), so `fedtune site start` decrypts it into a 0600 file in
the site folder for the SuperNode's lifetime and deletes it when the site stops. A private key
readable by group or others is refused, not warned about."""

from __future__ import annotations

import atexit
import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from common.atomic import PRIVATE, PUBLIC, atomic_write_bytes
from common.errors import ConfigError

PASSPHRASE_ENV, PASSPHRASE_FILE_ENV = "FEDTUNE_KEY_PASSPHRASE", "FEDTUNE_KEY_PASSPHRASE_FILE"
NIST = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


def ssh_fingerprint(pub_line: str) -> str:
    """OpenSSH-style SHA256 fingerprint of a public key line ("SHA256:base64, no padding")."""
    parts = pub_line.split()
    if len(parts) < 2:
        raise ConfigError(f"not an OpenSSH public key line: {pub_line[:40]!r}")
    digest = hashlib.sha256(base64.b64decode(parts[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def passphrase(file: Path | None = None) -> bytes | None:
    """The key passphrase: --passphrase-file, $FEDTUNE_KEY_PASSPHRASE_FILE, $FEDTUNE_KEY_PASSPHRASE."""
    path = file or (Path(os.environ[PASSPHRASE_FILE_ENV]) if os.environ.get(PASSPHRASE_FILE_ENV) else None)
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"passphrase file {path} does not exist")
        refuse_loose(path, what="passphrase file")
        return path.read_bytes().rstrip(b"\r\n")
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def refuse_loose(path: Path, *, what: str = "private key") -> None:
    """A secret readable (or writable) by group or others is an error naming the fix."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"{what} {path} has mode {mode:04o}: other users on this machine can read "
                          f"it. Run `chmod 600 {path}` (owner only), then start again")


def keygen(*, name: str, out: Path, secret: bytes | None = None, force: bool = False) -> tuple[Path, Path]:
    """Write out/<name>.key (0600; encrypted when `secret`) and out/<name>.pub; returns both."""
    from fedtune.ops.certs import SITE_NAME

    if not SITE_NAME.match(name):
        raise ConfigError(f"--name {name!r}: use letters, digits, '-', '_' or '.' (max 63)")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    priv, pub = out / f"{name}.key", out / f"{name}.pub"
    if not force and (priv.exists() or pub.exists()):
        raise ConfigError(f"{priv} already exists: keep it (it is enrolled), or pass --force to make "
                          "a new pair (then enroll the new .pub and unregister the old node)")
    key = ec.generate_private_key(ec.SECP384R1())
    if secret:  # encrypted PKCS#8 (OpenSSH's own encryption would need the bcrypt package)
        data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.BestAvailableEncryption(secret))
    else:
        data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                 serialization.NoEncryption())
    atomic_write_bytes(priv, data, mode=PRIVATE)
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH)
    atomic_write_bytes(pub, line + f" fedtune-site-{name}\n".encode(), mode=PUBLIC)
    return priv, pub


def check_public_key(path: Path) -> str:
    """The key line of an OpenSSH EC (NIST curve) public key file, or an error naming the fix."""
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    try:
        public = serialization.load_ssh_public_key(text.encode())
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path} is not an OpenSSH public key ({err}): use the <name>.pub written "
                          "by `fedtune site keygen` at that site") from err
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(public.curve, NIST):
        raise ConfigError(f"{path} is not an EC key on a NIST curve: Flower node authentication "
                          "needs one; make it with `fedtune site keygen`")
    return text


def _need(key: Path, secret: bytes | None) -> bytes:
    if not secret:
        raise ConfigError(f"--key {key} is encrypted: set {PASSPHRASE_ENV} or "
                          f"{PASSPHRASE_FILE_ENV} (a 0600 file holding the passphrase)")
    return secret


def load_site_key(key: Path, *, site_dir: Path, secret: bytes | None = None) -> Path:
    """Check the site's private key; return the path to hand Flower (a 0600 decrypted copy in
    `site_dir` when the key is encrypted, deleted when this process exits)."""
    if not key.is_file():
        raise ConfigError(f"--key {key} does not exist: make this site's key pair with `fedtune site "
                          "keygen --name NAME --out DIR` and send only NAME.pub to the coordinator")
    refuse_loose(key)
    raw = key.read_bytes()
    secret = secret if secret is not None else passphrase()
    encrypted = b"-----BEGIN ENCRYPTED" in raw[:64]
    try:
        if raw.startswith(b"-----BEGIN OPENSSH"):
            try:
                private = serialization.load_ssh_private_key(raw, password=None)
            except TypeError:  # password-protected OpenSSH key (ssh-keygen)
                encrypted = True
                private = serialization.load_ssh_private_key(raw, password=_need(key, secret))
        else:  # PKCS#8 / PEM, encrypted or not
            private = serialization.load_pem_private_key(
                raw, password=_need(key, secret) if encrypted else None)
    except ConfigError:
        raise
    except UnsupportedAlgorithm as err:
        raise ConfigError(f"--key {key} cannot be decrypted here ({err}): convert it to encrypted "
                          "PKCS#8 (`fedtune site keygen --passphrase-file` writes that)") from err
    except (ValueError, TypeError) as err:
        if encrypted:
            raise ConfigError(f"--key {key}: wrong passphrase ({err})") from err
        raise ConfigError(f"--key {key} is not an OpenSSH private key ({err}): use the <name>.key "
                          "written by `fedtune site keygen`") from err
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"--key {key} is not an EC key: Flower node authentication needs an EC "
                          "(NIST curve) key, as written by `fedtune site keygen`")
    if not encrypted:
        return key
    site_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    plain = site_dir / ".node-auth.key"
    atomic_write_bytes(plain, private.private_bytes(serialization.Encoding.PEM,
                                                    serialization.PrivateFormat.OpenSSH,
                                                    serialization.NoEncryption()), mode=PRIVATE)
    atexit.register(lambda: plain.unlink(missing_ok=True))
    return plain
