"""The registry lock: every read-modify-write of aliases and their history (gate, promote, rollback) holds it."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from ftops import settings
from ftops.errors import FtopsError

LOCK_TIMEOUT_S = 120


@contextmanager
def registry_lock():
    """Serialize registry read-modify-writes between processes: a file lock beside the embedded SQLite store.

    With ``MLFLOW_TRACKING_URI`` set, the lock file in ``$FTOPS_HOME`` serializes the ftops processes of this machine
    only: against a shared MLflow server, run promotions from one place (e.g. one CI job)."""
    from filelock import FileLock, Timeout

    home = settings.home()
    home.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(home / "registry.lock"))
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            print(
                f"waiting for the registry lock ({home / 'registry.lock'}): another promotion is running",
                file=sys.stderr,
                flush=True,
            )
            lock.acquire(timeout=LOCK_TIMEOUT_S)
    except Timeout as e:
        raise FtopsError(
            f"{home / 'registry.lock'}: another promotion held the registry lock for "
            f"{LOCK_TIMEOUT_S} s; retry, or remove the file if no ftops process is running"
        ) from e
    try:
        yield
    finally:
        lock.release()
