"""Whom `fedtune verify` trusts: a pinned publisher key, and the base model the adapter needs.

A signature proves only that the bundle was signed by the key passed as --pub; whoever hands over
the bundle can hand over a key too. So the key must match a fingerprint the verifier obtained over
another channel: `--pin sha256:HEX` (printed by `fedtune keygen`) or a release policy file

    # release-policy.toml (the verifier's own file)
    publisher-key-sha256 = ["sha256:…"]      # one or more trusted publisher keys
    base-model-sha256 = ["…"]                # optional: the base models this site accepts

The base-model check (the adapter belongs to the base model you will run it on) is on by default;
`--skip-base-model-check` turns it off with a warning."""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.errors import FedtuneError

_HEX = re.compile(r"^[0-9a-f]{64}$")
POLICY_KEYS = {"publisher-key-sha256", "base-model-sha256"}


class TrustError(FedtuneError, ValueError):
    """The publisher key is not pinned, or not the pinned one; or the policy file is bad."""


def key_fingerprint(public: Ed25519PublicKey) -> str:
    """'sha256:' + the full sha256 of the key's raw 32 bytes (what --pin takes)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _norm(pin: str, *, where: str) -> str:
    value = pin.strip().lower().removeprefix("sha256:")
    if not _HEX.match(value):
        raise TrustError(f"{where} {pin!r} is not a key fingerprint: write sha256: and 64 hex digits, "
                         "as `fedtune keygen` printed it")
    return value


@dataclass
class Trust:
    keys: set[str] = field(default_factory=set)  # pinned publisher fingerprints (hex)
    bases: set[str] = field(default_factory=set)  # accepted base-model sha256 (empty: any)


def load_trust(pins: list[str] | None, policy: Path | None) -> Trust:
    """Pins from --pin and the release policy file."""
    trust = Trust({_norm(p, where="--pin") for p in pins or []})
    if policy is not None:
        try:
            data = tomllib.loads(Path(policy).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise TrustError(f"release policy {policy} is unreadable ({err})") from err
        unknown = set(data) - POLICY_KEYS
        if unknown:
            raise TrustError(f"release policy {policy}: unknown key {sorted(unknown)[0]!r}: use "
                             f"{' or '.join(sorted(POLICY_KEYS))}")
        trust.keys |= {_norm(str(p), where=f"{policy}: publisher-key-sha256")
                       for p in data.get("publisher-key-sha256", [])}
        trust.bases |= {str(b).strip().lower() for b in data.get("base-model-sha256", [])}
    return trust


def check_key(public: Ed25519PublicKey, trust: Trust, *, pub: Path) -> None:
    """Refuse a --pub that is not pinned (no pin at all is refused too)."""
    mine = key_fingerprint(public)
    if not trust.keys:
        raise TrustError(f"no pinned publisher key: --pub {pub} has fingerprint {mine}. Confirm it "
                         "with the publisher over another channel (phone, signed e-mail), then pass "
                         f"--pin {mine} (or list it in a --policy file)")
    if mine.removeprefix("sha256:") not in trust.keys:
        raise TrustError(f"--pub {pub} has fingerprint {mine}, which is not pinned: the bundle may "
                         "come with an impostor's key. Get the publisher's key again, or pin the "
                         "fingerprint the publisher confirms")


def check_base(named: str, trust: Trust, *, where: Path) -> None:
    if trust.bases and named.lower() not in trust.bases:
        raise TrustError(f"{where} names base model {named[:16]}…, which the release policy does "
                         "not accept (base-model-sha256)")
