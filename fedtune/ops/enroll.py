"""`fedtune coordinator enroll`: allow one site's public key, and record who it is.

Wraps `flwr supernode register` against the coordinator's loopback Control API (the public
address forwards only the Fleet API; fedtune/ops/proxy.py). Flower answers with the node id the
key will authenticate as; fedtune records {node id, site name, key fingerprint, declared dataset
size} in the coordinator's site registry (sites.json beside its state db), which the ServerApp
uses to name every reply (server/identity.py). The registry is found from `--state`, else from the
running coordinator itself (it serves its state folder's path on loopback only)."""

from __future__ import annotations

import json
import ssl
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from common.errors import ConfigError, FedtuneError
from fedtune.ops import ops_env, require_loopback, split_address, write_connection
from fedtune.ops.keys import ssh_fingerprint
from fedtune.ops.coordinator import DEFAULT_PORT, coordinator_files, registry_path
from fedtune.ops.proxy import INFO
from server.identity import Enrolled, load_registry, save_enrolment


def _public_key(files_sites: Path | None, *, site: str | None, public_key: Path | None) -> Path:
    if public_key is not None:
        path = public_key
    elif site and files_sites is not None:
        path = files_sites / f"{site}.pub"
    else:
        raise ConfigError("coordinator enroll needs --site NAME (with --certs) or --public-key FILE")
    if not path.is_file():
        raise ConfigError(f"public key {path} not found: copy the site's <name>.pub (from `fedtune "
                          "site keygen` at the site) there, or pass --public-key FILE")
    first = path.read_text(encoding="utf-8", errors="replace").split()
    if not first or not first[0].startswith("ecdsa-sha2-nistp"):
        raise ConfigError(f"{path} is not an OpenSSH EC public key (expected a line starting with "
                          "'ecdsa-sha2-nistp384'): use the .pub file written by `fedtune site keygen`")
    return path


def _registry(coordinator: str, *, state: Path | None, ca: Path | None) -> Path | None:
    """sites.json of the coordinator: from --state, else asked from the coordinator on loopback."""
    if state is not None:
        return registry_path(state)
    if ca is None:
        return None  # an --insecure demo coordinator: no node authentication, no registry
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False  # the chain is verified; the loopback address need not be a SAN
    try:
        with urllib.request.urlopen(f"https://{coordinator}{INFO}", timeout=10,  # noqa: S310
                                    context=ctx) as resp:
            return Path(json.loads(resp.read())["registry"])
    except (OSError, ValueError, KeyError) as err:
        raise FedtuneError(f"cannot ask the coordinator at {coordinator} where its site registry "
                           f"is ({err}): run enroll on the coordinator host against 127.0.0.1:PORT, "
                           "or pass --state (the coordinator's --state file)") from err


def enroll(*, certs: Path | None, site: str | None = None, public_key: Path | None = None,
           coordinator: str = f"127.0.0.1:{DEFAULT_PORT}", insecure: bool = False,
           max_examples: int | None = None, state: Path | None = None) -> int:
    """Register a site's public key with the running coordinator and record it in sites.json."""
    files = coordinator_files(certs) if certs is not None else None
    key = _public_key(files.sites if files else None, site=site, public_key=public_key)
    host, _ = split_address(coordinator)
    if files is None and not insecure:
        raise ConfigError("coordinator enroll needs --certs DIR (for the CA that verifies the "
                          "coordinator), or --insecure for a coordinator started with --insecure")
    if insecure:
        require_loopback(host, what="--coordinator", fix="Enroll against a TLS coordinator with --certs.")
    if max_examples is not None and max_examples < 1:
        raise ConfigError(f"--max-examples {max_examples}: give the site's declared dataset size (>= 1)")
    name = site or key.stem
    fingerprint = ssh_fingerprint(key.read_text(encoding="utf-8"))
    registry = _registry(coordinator, state=state, ca=None if files is None else files.ca)
    with tempfile.TemporaryDirectory(prefix="fedtune-enroll-") as home:
        write_connection(Path(home), address=coordinator, ca=None if insecure else files.ca)
        env, _ = ops_env(Path(home))
        proc = subprocess.run(["flwr", "supernode", "register", str(key), "fedtune", "--name", name,
                               "--format", "json"], env=env, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    out = (proc.stdout + proc.stderr).strip()
    node_id = _json_field(proc.stdout, "node-id")
    size = f", at most {max_examples:,} examples" if max_examples else ""
    if proc.returncode == 0 and node_id is not None:
        if registry is not None:
            save_enrolment(registry, Enrolled(int(node_id), name, fingerprint, max_examples))
        print(f"enrolled site {name!r} as node {node_id} (public key {key}, {fingerprint}{size}); "
              "it may now connect", flush=True)
        return 0
    low = out.lower()
    if "already" in low and ("use" in low or "exist" in low or "registered" in low):
        return _already(registry, name=name, key=key, fingerprint=fingerprint,
                        max_examples=max_examples)
    if "certificate" in low or "ssl" in low:
        raise FedtuneError(f"cannot reach the coordinator's Control API at {coordinator} over TLS: "
                           f"check --coordinator and that --certs holds its ca.crt.\n{out[-1500:]}")
    raise FedtuneError(f"enrolling {key} at {coordinator} failed (flwr exit {proc.returncode}); is "
                       "the coordinator running there? (the Control API answers on 127.0.0.1 only: "
                       f"run this on the coordinator host or through an SSH tunnel)\n{out[-1500:]}")


def _already(registry: Path | None, *, name: str, key: Path, fingerprint: str,
             max_examples: int | None) -> int:
    """The key is registered with Flower: update its registry entry (name, size) if we have one."""
    known = [e for e in load_registry(registry).values() if e.public_key_sha256 == fingerprint] \
        if registry is not None else []
    if registry is not None and not known:
        raise FedtuneError(f"the key {key} is registered with the coordinator but not in its site "
                           f"registry {registry}: unregister it (`flwr supernode unregister "
                           "NODE_ID`) and enroll again, so that its node id is recorded")
    for entry in known:
        cap = max_examples if max_examples is not None else entry.max_examples
        save_enrolment(registry, Enrolled(entry.node_id, name, fingerprint, cap))
    print(f"site {name!r} is already enrolled (public key {key}); nothing to do", flush=True)
    return 0


def _json_field(text: str, key: str):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line).get(key)
            except json.JSONDecodeError:
                continue
    try:
        return json.loads(text).get(key)
    except (json.JSONDecodeError, AttributeError):
        return None
