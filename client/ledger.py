"""The journal under a site's privacy ledger: append-only, hash-chained, locked, fsynced.

Why each piece:
- One journal per site dataset LINEAGE (`<site_dir>/ledger/journal.jsonl`), not per content hash:
  changing scrubbing, augmentation, the seed or appending a row changes the prepared train split,
  and a ledger keyed on its hash started empty again. The lineage record
  (`<site_dir>/lineage.json`) binds a random lineage id to the site's name and data file and keeps
  the chain's head and length, so deleting or editing the journal is detected, never a fresh budget.
- Every entry carries the sha256 of the previous one (`prev`) and its own (`hash`); `load`
  re-checks the whole chain and fails with a message naming the file.
- `fcntl.flock` on `<site_dir>/ledger/.lock` serialises plan -> check -> train -> record across
  processes, so two runs cannot both pass the budget check and the last writer cannot drop entries.
  The kernel drops the lock when its holder dies (SIGKILL included).
- Each append is written, flushed and fsynced, then the lineage record is replaced atomically and
  the directories fsynced. A crash between the two leaves a journal one entry AHEAD of the record;
  that entry chains onto the recorded head and is accepted. A torn last line beyond the recorded
  length (killed mid-write) was never committed and is dropped. Anything else is tampering.
Tamper-EVIDENT, not tamper-proof: whoever can rewrite both files can forge them; the site's
operator is the root of trust here (README, Privacy)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from common.atomic import atomic_write_text, fsync_dir
from common.errors import REFUSED, FedtuneError

GENESIS = "0" * 64
JOURNAL, MARKER, LOCK = "ledger/journal.jsonl", "lineage.json", "ledger/.lock"


class LedgerCorrupt(FedtuneError, RuntimeError):
    """The journal does not verify against its lineage record: the site refuses to train."""

    code = REFUSED
    public = ("refused: the site's privacy ledger does not verify; the site's operator must restore "
              "it from backup or reset it explicitly")


def entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _write_marker(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True), durable=True)


MARKER_TYPES = {"lineage": str, "site": str, "source": str, "count": int, "head": str}
RESET_HINT = "reset with `fedtune ledger reset --site-dir DIR --reason ...`"


def checked_marker(marker: Any, path: Path) -> dict[str, Any]:
    """The lineage record as `create`/`append` write it; any other shape is damage, named."""
    bad = [k for k, t in MARKER_TYPES.items() if not isinstance(marker, dict)
           or not isinstance(marker.get(k), t) or isinstance(marker.get(k), bool)]
    if bad or marker["count"] < 0:
        raise LedgerCorrupt(f"lineage record {path} is damaged ({', '.join(bad) or 'count'} missing or "
                            f"of the wrong type): restore it from backup, or {RESET_HINT}")
    return marker


def read_format1(path: Path) -> list[dict[str, Any]]:
    """The spending in an old (format 1) per-fingerprint JSON ledger, checked field by field: a
    damaged one stops the site rather than being forgotten (its epsilon was really spent)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        entries = doc.get("entries", []) if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            raise ValueError("no list of entries")
        return [{"file": path.name, "run": str(e["run"]), "round": int(e["round"]),
                 "noise_multiplier": float(e["noise_multiplier"]),
                 "sample_rate": float(e["sample_rate"]), "steps": int(e["steps"])} for e in entries]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise LedgerCorrupt(f"old privacy ledger {path} cannot be imported ({type(err).__name__}: "
                            f"{err}): restore it from backup; only if what it spent is accounted "
                            "for elsewhere, move it out of that folder") from None


class Journal:
    """The entries of one site dir's lineage; read with `load`, changed only inside `locked()`."""

    def __init__(self, site_dir: str | Path):
        self.site_dir = Path(site_dir)
        self.path = self.site_dir / JOURNAL
        self.marker_path = self.site_dir / MARKER
        self.entries: list[dict[str, Any]] = []
        self.marker: dict[str, Any] | None = None
        self._depth, self._lock_fd = 0, -1
        self._torn = 0  # bytes of a torn last line to cut before the next append

    @contextmanager
    def locked(self, *, load: bool = True) -> Iterator["Journal"]:
        """Hold the site's ledger lock (re-entrant in this object) and work on a fresh load."""
        if self._depth == 0:
            (self.site_dir / "ledger").mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.site_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._depth += 1
        try:
            if self._depth == 1 and load:
                self.load()
            yield self
        finally:
            self._depth -= 1
            if self._depth == 0:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = -1

    def locked_raw(self):
        """The lock without loading: only for the operator's reset of a ledger that does not verify."""
        return self.locked(load=False)

    def load(self) -> None:
        """Read and verify marker + journal; raises LedgerCorrupt naming the file."""
        try:
            marker = json.loads(self.marker_path.read_text(encoding="utf-8")) if self.marker_path.is_file() else None
        except (OSError, ValueError):  # it is only ever replaced atomically: damaged, not torn
            raise LedgerCorrupt(f"lineage record {self.marker_path} is unreadable: restore it from "
                                f"backup, or {RESET_HINT}") from None
        if marker is None:
            if self.path.is_file() and self.path.stat().st_size:
                raise LedgerCorrupt(f"privacy ledger {self.path} exists but its lineage record {self.marker_path}"
                                    " is missing: restore it from backup, or start over with `fedtune ledger "
                                    "reset --site-dir DIR --reason ...`")
            self.marker, self.entries, self._torn = None, [], 0
            return
        marker = checked_marker(marker, self.marker_path)
        if not self.path.is_file() and int(marker.get("count", 0)) == 0:
            self.marker, self.entries, self._torn = marker, [], 0  # created, nothing written yet
            return
        if not self.path.is_file():
            raise LedgerCorrupt(f"privacy ledger {self.path} is missing but {self.marker_path} records "
                                f"{marker.get('count')} entries (lineage {marker.get('lineage')}): the journal "
                                "was deleted; restore it from backup, or reset explicitly with `fedtune ledger "
                                "reset --site-dir DIR --reason ...`")
        raw = self.path.read_bytes()
        lines, torn = raw.split(b"\n"), 0
        tail = lines.pop()  # b"" when the file ends with a newline; else a write cut short
        if tail:
            if len(lines) < int(marker["count"]):
                raise LedgerCorrupt(f"privacy ledger {self.path} is cut short inside a recorded entry: "
                                    "restore it from backup")
            torn = len(tail)  # never committed (the lineage record does not count it): dropped
        entries = []
        for i, line in enumerate(lines):
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if not isinstance(entry, dict):
                raise LedgerCorrupt(f"privacy ledger {self.path} line {i + 1} is not a JSON entry: the "
                                    "journal was edited or damaged; restore it from backup")
            entries.append(entry)
        self._verify(entries, marker)
        self.marker, self.entries, self._torn = marker, entries, torn

    def _verify(self, entries: list[dict[str, Any]], marker: dict[str, Any]) -> None:
        prev = GENESIS
        for i, e in enumerate(entries):
            if e.get("seq") != i or e.get("prev") != prev or e.get("hash") != entry_hash(e):
                raise LedgerCorrupt(f"privacy ledger {self.path} entry {i + 1} breaks the hash chain: the "
                                    "journal was edited; restore it from backup (the lineage record "
                                    f"{self.marker_path} keeps the expected head)")
            prev = e["hash"]
        count = int(marker.get("count", 0))
        if len(entries) < count or (count and entries[count - 1]["hash"] != marker.get("head")):
            raise LedgerCorrupt(f"privacy ledger {self.path} holds {len(entries)} verified entries but "
                                f"{self.marker_path} records {count} with another head: entries were "
                                "removed or rewritten; restore the journal from backup")
        if len(entries) > count + 1:
            raise LedgerCorrupt(f"privacy ledger {self.path} runs {len(entries) - count} entries past its "
                                f"lineage record {self.marker_path}: restore both from the same backup")
        if entries and entries[0].get("lineage") != marker.get("lineage"):
            raise LedgerCorrupt(f"privacy ledger {self.path} belongs to lineage {entries[0].get('lineage')}, "
                                f"not {marker.get('lineage')} ({self.marker_path})")

    def create(self, *, site: str, source: str, extra: dict[str, Any]) -> dict[str, Any]:
        """Start a lineage: a new random id bound to this site and data file (first entry)."""
        assert self._depth and self.marker is None
        lineage = uuid.uuid4().hex
        self.marker = {"lineage": lineage, "site": site, "source": source, "count": 0, "head": GENESIS}
        _write_marker(self.marker_path, self.marker)  # first: a journal never exists without it
        return self.append({"kind": "lineage", "lineage": lineage, "site": site, "source": source, **extra})

    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Add one entry (fsync journal, then the lineage record, then the directories)."""
        assert self._depth and self.marker is not None, "append outside locked()"
        prev = self.entries[-1]["hash"] if self.entries else GENESIS
        entry = {**entry, "seq": len(self.entries), "prev": prev, "time": entry.get("time", time.time())}
        entry["hash"] = entry_hash(entry)
        with open(self.path, "ab") as fh:
            if self._torn:
                fh.truncate(fh.seek(0, os.SEEK_END) - self._torn)
                self._torn = 0
            fh.write(json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(self.path.parent)
        self.entries.append(entry)
        self.marker.update(count=len(self.entries), head=entry["hash"])
        _write_marker(self.marker_path, self.marker)
        return entry
