"""The ledger's spool: where a row goes when the database cannot take it, until it can (one file per database)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from filelock import FileLock

from ftops import settings
from ftops.errors import FtopsError
from ftops.redact import redact
from ftops.serving.ledger_metrics import FAILED_ROWS, SPOOLED_ROWS
from ftops.serving.ledger_schema import default_url

log = logging.getLogger("ftops.serving")


def spool_path(url: str | None) -> Path:
    """The spool of the ledger at ``url`` (None: the default): ``$FTOPS_HOME/ledger-spool-<hash of the URL>.jsonl``,
    one per database, so rows are written only to the database they were meant for."""
    digest = hashlib.sha256((url or default_url()).encode()).hexdigest()[:12]
    return settings.home() / f"ledger-spool-{digest}.jsonl"


class Spool:
    """Append-only local file of ledger rows the database could not take: one JSON line per row, fsync'd before
    :meth:`append` returns. :meth:`drain` hands every row to a writer and empties the file only once it succeeded.
    A file lock makes appends and drains of several processes sharing ``$FTOPS_HOME`` take turns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = FileLock(str(path) + ".lock")

    def pending(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def append(self, row: dict) -> None:
        line = json.dumps({**row, "ts": row["ts"].isoformat()}, separators=(",", ":")) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            new = not self.path.exists()
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            if new:  # the file's directory entry must survive a crash too
                _fsync_dir(self.path.parent)

    def drain(self, write: Callable[[list[dict]], int]) -> int:
        """Give every spooled row to ``write`` (which returns how many it wrote), then empty the spool; on an
        exception the spool is left as it was. A torn last line (a crash mid-append) is skipped with a warning."""
        with self._lock:
            if not self.pending():
                return 0
            rows = []
            for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    row["ts"] = datetime.fromisoformat(row["ts"])
                except (ValueError, KeyError, TypeError) as e:
                    log.warning("ledger spool %s:%d: unreadable line skipped (%s)", self.path, n, e)
                    continue
                rows.append(row)
            written = write(rows)
            with open(self.path, "w", encoding="utf-8") as f:
                f.flush()
                os.fsync(f.fileno())
            return written


def to_spool(spool: Spool, row: dict, url: str, why: str) -> None:
    """Append ``row``, which the database at ``url`` could not take (``why``), to ``spool``; its ``id`` becomes None.
    When the spool cannot be written either, the row is lost: counted, logged and raised as :class:`FtopsError`."""
    try:
        spool.append(row)
    except OSError as e:
        FAILED_ROWS.inc()
        log.error("ledger: row %s LOST: %s; the spool %s cannot be written (%s)", row["request_id"], why, spool.path, e)
        raise FtopsError(
            f"ledger {redact(url)!r}: row {row['request_id']} lost: {redact(why)}, and the spool {spool.path} "
            f"cannot be written ({e}); free disk space or fix the permissions of FTOPS_HOME"
        ) from e
    SPOOLED_ROWS.inc()
    row["id"] = None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
