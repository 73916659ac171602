"""The publisher's Ed25519 key pair of `fedtune keygen / release / verify`: making it (private
key 0600 from its first byte), loading it (refused when others can read it or it is not Ed25519),
its id, and the site pseudonyms derived from it (fedtune/release.py)."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.atomic import PUBLIC, atomic_write_bytes
from common.errors import FedtuneError
from fedtune.export import OutputExistsError


class ReleaseError(FedtuneError, ValueError):
    """A key is unusable, or a bundle fails verification (the message names the file)."""


KEY_NAME, PUB_NAME = "fedtune_ed25519.key", "fedtune_ed25519.pub"


class ReleaseError(FedtuneError, ValueError):
    """A key is unusable, or a bundle fails verification (the message names the file)."""


def keygen(out: str | Path, *, force: bool = False) -> tuple[Path, Path]:
    """Write OUT/fedtune_ed25519.key (PEM PKCS8, mode 0600) and OUT/fedtune_ed25519.pub."""
    out = Path(out)
    key_path, pub_path = out / KEY_NAME, out / PUB_NAME
    for path in (key_path, pub_path):
        if path.exists() and not force:
            raise OutputExistsError(f"{path} already exists: keep using it, or pass --force to replace it "
                                    "(bundles signed with the old key will no longer verify with the new one)")
    out.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    atomic_write_bytes(key_path, pem)  # 0600 from its first byte: never readable by others
    atomic_write_bytes(pub_path, public_pem(private.public_key()), mode=PUBLIC)
    return key_path, pub_path


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(public: Ed25519PublicKey) -> str:
    """Short id of a public key: sha256 of its raw 32 bytes, first 16 hex digits."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The signing key; refused when group/other-readable or not Ed25519."""
    path = Path(path)
    if not path.is_file():
        raise ReleaseError(f"--key {path} does not exist: make a key pair with `fedtune keygen --out DIR`")
    if os.stat(path).st_mode & 0o077:
        raise ReleaseError(f"--key {path} is readable by other users (mode {oct(os.stat(path).st_mode & 0o777)}): "
                           f"run `chmod 600 {path}`, and consider the key compromised if others could read it")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as err:
        raise ReleaseError(f"--key {path} is not an unencrypted PEM private key ({err}): pass the "
                           f"{KEY_NAME} file written by `fedtune keygen`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ReleaseError(f"--key {path} is a {type(key).__name__}, not Ed25519: make one with `fedtune keygen`")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    path = Path(path)
    if not path.is_file():
        raise ReleaseError(f"--pub {path} does not exist: pass the publisher's {PUB_NAME}")
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        raise ReleaseError(f"--pub {path} is a PRIVATE key: pass the public {PUB_NAME}, and never share the .key file")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as err:
        raise ReleaseError(f"--pub {path} is not a PEM public key ({err}): pass the publisher's {PUB_NAME}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ReleaseError(f"--pub {path} is a {type(key).__name__}, not an Ed25519 key from `fedtune keygen`")
    return key


def pseudonym_secret(private: Ed25519PrivateKey) -> bytes:
    raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    return hashlib.sha256(b"fedtune site pseudonym\0" + raw).digest()


def pseudonym(site: str, *, secret: bytes) -> str:
    """"site-" + 8 hex digits of HMAC-SHA256(secret, site name): stable, not reversible without the key."""
    return "site-" + hmac.new(secret, site.encode("utf-8"), hashlib.sha256).hexdigest()[:8]
