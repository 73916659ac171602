"""Who sent a reply: the coordinator's site registry, never the reply's own `site` record.

`fedtune coordinator enroll` registers a site's public key with Flower (which answers with the
node id the key authenticates as) and records {node id, name, key fingerprint, declared dataset
size} in `sites.json` next to the coordinator's state db. `fedtune coordinator start` hands the
ServerApp that file's path in $FEDTUNE_SITE_REGISTRY. A reply's Flower node id
(`msg.metadata.src_node_id`, set by the SuperLink from the authenticated node, not by the site)
then names the site; whatever name the reply claims is ignored, and a mismatch is logged.

Without a registry (simulation, an --insecure demo: no node authentication, hence no identity to
check) the self-reported name is used, but bound to the first node id that claimed it in this
run: a second node claiming the same name is called `node-<id>`."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import Message

from common.atomic import atomic_write_text
from common.errors import ConfigError

REGISTRY_ENV = "FEDTUNE_SITE_REGISTRY"
REGISTRY_FILE = "sites.json"


@dataclass(frozen=True)
class Enrolled:
    """One enrolled site, as the coordinator's operator recorded it."""

    node_id: int
    name: str
    public_key_sha256: str = ""
    max_examples: int | None = None  # the dataset size the site declared at enrolment


def load_registry(path: Path) -> dict[int, Enrolled]:
    """node id -> Enrolled; a missing file is an empty registry (nobody enrolled yet)."""
    if not path.is_file():
        return {}
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["sites"]
        out = {}
        for r in rows:
            cap = r.get("max_examples")
            out[int(r["node_id"])] = Enrolled(int(r["node_id"]), str(r["name"]),
                                              str(r.get("public_key_sha256", "")),
                                              None if cap is None else int(cap))
        return out
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"site registry {path} is unreadable ({err}): restore it from a backup "
                          "or enroll the sites again (fedtune coordinator enroll)") from err


def save_enrolment(path: Path, entry: Enrolled) -> None:
    """Add or replace (by node id) one site in the registry, atomically, mode 0600."""
    reg = load_registry(path)
    reg[entry.node_id] = entry
    rows = [{"node_id": e.node_id, "name": e.name, "public_key_sha256": e.public_key_sha256,
             "max_examples": e.max_examples} for e in sorted(reg.values(), key=lambda e: e.name)]
    atomic_write_text(path, json.dumps({"version": 1, "updated": time.time(), "sites": rows}, indent=1))


def claimed_name(msg: Message) -> str | None:
    """The name a reply claims for itself (never trusted; None when absent or malformed)."""
    try:
        if msg.has_content() and "site" in msg.content:
            return str(msg.content["site"]["name"])[:64]
    except Exception:  # noqa: BLE001 - a malformed record is just "no claim"
        return None
    return None


@dataclass
class SiteIdentity:
    """Names replies by node id (`registry` given) or by first-come self-report (None)."""

    registry: dict[int, Enrolled] | None = None
    path: Path | None = None
    warnings: list[str] = field(default_factory=list)
    _bound: dict[str, int] = field(default_factory=dict)
    _warned: set[tuple[int, str]] = field(default_factory=set)

    @classmethod
    def from_env(cls) -> "SiteIdentity":
        """The registry named by $FEDTUNE_SITE_REGISTRY (set by `fedtune coordinator start`)."""
        value = os.environ.get(REGISTRY_ENV)
        if not value:
            return cls()
        path = Path(value)
        return cls(load_registry(path), path)

    def refresh(self) -> None:
        """Re-read the registry (a site enrolled while the run waits for it)."""
        if self.path is not None:
            self.registry = load_registry(self.path)

    def _warn(self, node: int, text: str) -> None:
        if (node, text) not in self._warned:
            self._warned.add((node, text))
            self.warnings.append(text)
            print(f"fedtune: WARNING {text}", flush=True)

    def enrolled(self, node: int) -> Enrolled | None:
        return None if self.registry is None else self.registry.get(node)

    def name(self, msg: Message) -> str:
        """The coordinator's name for the sender of `msg` (see the module docstring)."""
        return self.name_for(int(msg.metadata.src_node_id), claimed_name(msg))

    def name_for(self, node: int, claim: object = None) -> str:
        """The name for Flower node `node`, given what it claims to be (None: no claim)."""
        claim = None if claim is None else str(claim)[:64]
        if self.registry is not None:
            entry = self.registry.get(node)
            name = entry.name if entry else f"unenrolled-node-{node}"
            if claim is not None and claim != name:
                self._warn(node, f"node {node} (enrolled as {name!r}) claims to be {claim!r}; "
                                 "the claim is ignored")
            return name
        if claim is None:
            return f"node-{node}"
        owner = self._bound.setdefault(claim, node)
        if owner != node:
            self._warn(node, f"node {node} claims the name {claim!r} of node {owner}; "
                             f"recorded as node-{node}")
            return f"node-{node}"
        return claim

    def refusal(self, msg: Message) -> str:
        """Why a reply's sender may not contribute ("" = it may)."""
        if self.registry is not None and self.enrolled(int(msg.metadata.src_node_id)) is None:
            return (f"node {msg.metadata.src_node_id} is not in the site registry "
                    f"({self.path}): enroll its key with `fedtune coordinator enroll`")
        return ""

    def max_examples(self, msg: Message, cap: int) -> int:
        """The most examples this reply may claim: the run's cap, lowered to the enrolled size."""
        entry = self.enrolled(int(msg.metadata.src_node_id))
        if entry is not None and entry.max_examples is not None:
            return min(cap, entry.max_examples)
        return cap
