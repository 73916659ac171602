"""`fedtune certs`: the federation's key material, made once with `cryptography`.

Layout of `--out DIR` (one folder per recipient, so "what goes where" is a copy of a folder):

    ca/ca.crt, ca/ca.key                  the CA; keep ca.key offline (it signs the coordinator)
    coordinator/ca.crt                    for the coordinator
    coordinator/coordinator.{crt,key}     its TLS identity (SANs from --san)
    coordinator/sites/<name>.pub          site public keys to enroll (`fedtune coordinator enroll`)
    site-<name>/ca.crt                    for site <name>: the CA that verifies the coordinator

Site keys are made AT each site (`fedtune site keygen --name N --out DIR`, fedtune/ops/keys.py);
only `N.pub` travels here and `--site-keys DIR` (a folder of <name>.pub) copies them to
coordinator/sites/ for enrolment. Without --site-keys (a demo or a test on one machine) this
command still makes each site's pair in site-<name>/<name>.{key,pub}, with a warning: whoever
ran it could then impersonate every site.
The coordinator certificate always covers 127.0.0.1 and localhost as well as --san: the
operator reaches the Control API on the coordinator's loopback address (fedtune/ops/proxy.py).

Site keys are EC P-384 in OpenSSH format, which Flower 1.42 expects (`flower-supernode
--auth-supernode-private-key` loads an OpenSSH private key; `flwr supernode register` an OpenSSH
public key). Private keys are written 0600. Existing files are never replaced without --force:
re-running with new site names adds those sites and reuses the CA and coordinator certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.atomic import PRIVATE, PUBLIC, atomic_write_bytes
from common.errors import ConfigError
from fedtune.ops.keys import check_public_key

SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
DEFAULT_SANS = ("127.0.0.1", "localhost")


@dataclass
class CertsReport:
    """What `make_certs` created and kept (paths), for the hand-out message."""

    out: Path
    created: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    sites: list[str] = field(default_factory=list)
    site_keys_made_here: bool = False  # private site keys generated here (demo), not at the sites


def parse_sites(text: str) -> list[str]:
    """`a,b,c` -> ['a', 'b', 'c'], each a safe file/DNS-like name, no duplicates."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError("--sites is empty: name the sites, e.g. --sites bank-a,bank-b,hospital-c")
    for n in names:
        if not SITE_NAME.match(n):
            raise ConfigError(f"--sites: site name {n!r} is not allowed: use letters, digits, '-', "
                              "'_' or '.', starting with a letter or digit (max 63 characters)")
    if len(set(names)) != len(names):
        raise ConfigError(f"--sites lists a site twice ({text!r}): each site name must be unique")
    return names


def _san(entry: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(entry))
    except ValueError:
        if not re.match(r"^[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?$", entry):
            raise ConfigError(f"--san entry {entry!r} is neither an IP address nor a DNS name: "
                              "write e.g. --san 127.0.0.1,localhost,coord.example.org") from None
        return x509.DNSName(entry)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedtune federation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _make_ca(days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("fedtune CA")).issuer_name(_name("fedtune CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA384()))
    return cert, key


def _make_server(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, sans: list[str],
                 days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(sans[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([_san(s) for s in sans]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA384()))
    return cert, key


def cert_sans(path: Path) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in ext.get_values_for_type(x509.DNSName)] + \
        [str(v) for v in ext.get_values_for_type(x509.IPAddress)]


def make_certs(out: Path, *, sites: list[str], sans: list[str] | None = None, force: bool = False,
               ca_days: int = 3650, cert_days: int = 825, site_keys: Path | None = None) -> CertsReport:
    """Create (or complete) the federation's key material under `out`; see the module docstring."""
    asked = list(sans) + [s for s in DEFAULT_SANS if s not in sans] if sans else None
    sans = asked or list(DEFAULT_SANS)
    if site_keys is not None:  # check every site's .pub before writing anything
        missing = [n for n in sites if not (site_keys / f"{n}.pub").is_file()]
        if missing:
            raise ConfigError(f"--site-keys {site_keys}: no {missing[0]}.pub there: ask site "
                              f"{missing[0]!r} to run `fedtune site keygen --name {missing[0]} --out "
                              "DIR` and send you DIR/<name>.pub (never the .key)")
        for n in sites:
            check_public_key(site_keys / f"{n}.pub")
    for s in sans:
        _san(s)
    rep = CertsReport(out=out, sites=list(sites))
    ca_crt, ca_key_path = out / "ca" / "ca.crt", out / "ca" / "ca.key"
    if force or not (ca_crt.is_file() and ca_key_path.is_file()):
        ca, ca_key = _make_ca(ca_days)
        atomic_write_bytes(ca_key_path, _pem_key(ca_key), mode=PRIVATE)
        atomic_write_bytes(ca_crt, ca.public_bytes(serialization.Encoding.PEM), mode=PUBLIC)
        rep.created += [ca_crt, ca_key_path]
        force = True  # a new CA invalidates everything it signed before
    else:
        ca = x509.load_pem_x509_certificate(ca_crt.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        rep.kept.append(ca_crt)
    coord = out / "coordinator"
    crt, key = coord / "coordinator.crt", coord / "coordinator.key"
    if force or not (crt.is_file() and key.is_file()):
        cert, ckey = _make_server(ca, ca_key, sans, cert_days)
        atomic_write_bytes(key, _pem_key(ckey), mode=PRIVATE)
        atomic_write_bytes(crt, cert.public_bytes(serialization.Encoding.PEM), mode=PUBLIC)
        rep.created += [crt, key]
    else:
        have = cert_sans(crt)
        if asked and set(have) != {str(_san(s).value) for s in asked}:
            raise ConfigError(f"{crt} exists for {', '.join(have)}, not for --san {','.join(sans)}: "
                              "pass --force to reissue every certificate and key (sites then need "
                              "the new CA and keys, and must be enrolled again)")
        rep.kept.append(crt)
    _copy(ca_crt, coord / "ca.crt", rep)
    for name in sites:
        if site_keys is not None:
            _copy(site_keys / f"{name}.pub", coord / "sites" / f"{name}.pub", rep)
        else:
            _site(out, name, force=force, rep=rep)
        _copy(ca_crt, out / f"site-{name}" / "ca.crt", rep)
    rep.site_keys_made_here = site_keys is None
    return rep


def _site(out: Path, name: str, *, force: bool, rep: CertsReport) -> None:
    folder = out / f"site-{name}"
    priv, pub = folder / f"{name}.key", folder / f"{name}.pub"
    if force or not (priv.is_file() and pub.is_file()):
        key = ec.generate_private_key(ec.SECP384R1())
        atomic_write_bytes(priv, key.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.OpenSSH,
                                                   serialization.NoEncryption()), mode=PRIVATE)
        line = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                             serialization.PublicFormat.OpenSSH)
        atomic_write_bytes(pub, line + f" fedtune-site-{name}\n".encode(), mode=PUBLIC)
        rep.created += [priv, pub]
    else:
        rep.kept.append(priv)
    _copy(pub, out / "coordinator" / "sites" / f"{name}.pub", rep)


def _copy(src: Path, dst: Path, rep: CertsReport) -> None:
    if dst.is_file() and dst.read_bytes() == src.read_bytes():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o644)
    rep.created.append(dst)


def handout(rep: CertsReport) -> str:
    """Human instructions: which folder goes to whom."""
    out = rep.out
    lines = [f"fedtune certs: {len(rep.created)} files written, {len(rep.kept)} kept, in {out}", "",
             f"  KEEP OFFLINE      {out / 'ca' / 'ca.key'} (signs coordinator certificates)",
             f"  coordinator  <-   {out / 'coordinator'}/  (ca.crt, coordinator.crt, coordinator.key,"
             " sites/*.pub)",
             f"                    then: fedtune coordinator start --certs {out / 'coordinator'}",
             f"                          fedtune coordinator enroll --certs {out / 'coordinator'} --site NAME"]
    for name in rep.sites:
        own = f", {name}.key — its own private key, never copied elsewhere" \
            if rep.site_keys_made_here else " — its key stays where it made it"
        lines.append(f"  site {name:<12} <-  {out / f'site-{name}'}/  (ca.crt{own})")
    lines += ["", "  Every site gets ca.crt; the coordinator gets the site public keys (.pub) and "
              "enrolls them."]
    if rep.site_keys_made_here:
        lines += ["", "  WARNING: the sites' PRIVATE keys were made on this machine (demo): whoever "
                  "can read this folder can act as any site. In production each site runs "
                  "`fedtune site keygen` and you pass their .pub files with --site-keys DIR."]
    return "\n".join(lines)
