"""The operator's ledger commands (`fedtune ledger show | reset`): open a site's existing ledger
without creating anything, and the explicit, recorded fresh start of its budget."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from client.ledger import Journal, LedgerCorrupt, checked_marker
from client.privacy import PrivacyLedger


def open_ledger(site_dir: str | Path) -> PrivacyLedger:
    """The existing ledger of a site dir, for the operator's `fedtune ledger` commands."""
    journal = Journal(site_dir)
    if not (journal.marker_path.exists() or journal.path.exists()):  # read-only: create nothing
        raise FileNotFoundError(f"no privacy ledger under {journal.marker_path}")
    with journal.locked():
        lin = journal.entries[0] if journal.entries else None
    if lin is None:
        raise FileNotFoundError(f"no privacy ledger under {Path(site_dir) / 'lineage.json'}")
    return PrivacyLedger(site_dir, site=lin["site"], source=lin["source"],
                         num_examples=lin["num_examples"], run_budget=lin["budget"],
                         accountant=lin["accountant"])


def reset_ledger(site_dir: str | Path, *, reason: str) -> str:
    """The operator's explicit fresh start, recorded with its reason (never silent). A healthy
    ledger gets a `reset` entry (earlier entries stay, uncounted); one that does not verify is
    moved aside (`*.broken-<time>`) and a new lineage for the same site and data notes it."""
    if not reason.strip():
        raise ValueError("ledger reset needs --reason: say why this site's budget starts over")
    journal = Journal(site_dir)
    try:
        with journal.locked():
            if journal.marker is None:
                raise FileNotFoundError(f"no privacy ledger under {journal.marker_path}: nothing to reset")
            journal.append({"kind": "reset", "reason": reason})
            return f"reset recorded in {journal.path} (entry {len(journal.entries)})"
    except LedgerCorrupt:
        pass
    with journal.locked_raw():
        try:
            old = checked_marker(json.loads(journal.marker_path.read_text(encoding="utf-8")),
                                 journal.marker_path)
        except (OSError, ValueError, LedgerCorrupt):
            raise LedgerCorrupt(f"{journal.marker_path} is unreadable too: move {journal.path.parent} and "
                                f"{journal.marker_path} aside by hand, then start the site again") from None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for path in (journal.path, journal.marker_path):
            if path.exists():
                os.replace(path, path.with_name(f"{path.name}.broken-{stamp}"))
        journal.marker = None
        journal.create(site=old["site"], source=old["source"],
                       extra={k: old[k] for k in ("delta", "accountant", "budget", "num_examples") if k in old})
        journal.append({"kind": "reset", "reason": reason, "replaces": f"broken-{stamp}"})
        return f"the old ledger did not verify: moved aside as *.broken-{stamp}; new lineage {journal.path}"
