"""The one way fedtune writes a file or a directory: under a temporary name beside it, flushed to
disk, then renamed over it (os.replace is atomic on POSIX), so that a reader or a crash sees the
old version or the new one, never half a file. Every writer in fedtune goes through here.

Files are created 0600 (owner only) unless `mode` says otherwise; the temporary file has that
mode before a byte is written, so a private key is never readable by others, not even briefly.
`durable=True` also fsyncs the directory, so the rename itself survives a power cut (the
privacy ledger needs that; a report does not)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

PRIVATE, PUBLIC = 0o600, 0o644


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_replace(path: str | os.PathLike[str], *, mode: int = PRIVATE,
                   durable: bool = False) -> Iterator[IO[bytes]]:
    """A binary file handle whose content replaces `path` when the block ends without error
    (for writers that want a handle: np.savez, torch.save, savefig). On error `path` is untouched."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int = PRIVATE,
                       durable: bool = False) -> None:
    """Write `data` to `path` atomically."""
    with atomic_replace(path, mode=mode, durable=durable) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, mode: int = PRIVATE,
                      durable: bool = False) -> None:
    """Write `text` as UTF-8 to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode, durable=durable)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, mode: int = PRIVATE) -> None:
    """Write `obj` as pretty JSON (2-space indent, trailing newline) atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode(), mode=mode)


def atomic_write_csv(path: str | os.PathLike[str], frame: Any, *, mode: int = PRIVATE) -> None:
    """Write a pandas DataFrame as UTF-8 CSV without the index, atomically."""
    atomic_write_bytes(path, frame.to_csv(index=False).encode("utf-8"), mode=mode)


@contextmanager
def atomic_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory under a temporary name (yielded), then rename it into place; an existing
    directory is swapped out only once the new one is complete. On error nothing changes."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
