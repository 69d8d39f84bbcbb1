"""The registry lock: every read-modify-write of aliases and their history (gate, promote, rollback) holds it.

Promotions may run from any machine that reaches the registry, so the lock lives where the registry lives:

- **Embedded SQLite store** (no ``MLFLOW_TRACKING_URI``): a file lock beside the store, ``$FTOPS_HOME/registry.lock``.
  Only processes of this machine can open that SQLite file, and the kernel releases the lock of a process that dies.
- **``FTOPS_REGISTRY_LOCK_URL=postgresql://...``**: a PostgreSQL session advisory lock (``pg_advisory_lock``), best in
  the MLflow server's own backing database. PostgreSQL grants it to one session at a time, whatever machine it comes
  from, and releases it when the session ends, so a promoter that crashes or loses its network leaves nothing to clean.
  Every promoter must be given the same database.
- **A tracking server and no lock URL**: a lock kept in the registry itself, the registered model
  ``ftops-registry-lock``, created to take the lock and deleted to release it. Creating a registered model is atomic on
  every MLflow store (the name is the primary key of the SQL stores' table; a second create fails with
  ``RESOURCE_ALREADY_EXISTS``), so one process holds it at a time, with nothing but the MLflow URL. Its tags say who
  holds it since when; a process killed while holding it leaves it behind, and the error after the wait names the
  holder and says how to delete it.

Why not compare-and-set on the model's tags alone: MLflow's tag writes are unconditional (last writer wins) and it has
no conditional update, so "write a generation counter, re-read, verify" does not exclude: A writes and reads back its
own value, then B writes and reads back its own, and both go on believing they won. Re-reading only narrows the
window; an atomic create (or PostgreSQL's lock manager) closes it.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from filelock import FileLock, Timeout

from ftops import settings
from ftops.env import FTOPS_ACTOR, FTOPS_REGISTRY_LOCK_URL
from ftops.errors import FtopsError

LOCK_TIMEOUT_S = 120
LOCK_URL_ENV = FTOPS_REGISTRY_LOCK_URL.name
LOCK_MODEL = "ftops-registry-lock"  # the registered model that is the lock on a tracking server without a lock URL
TAG_HOLDER = "ftops.lock.holder"
TAG_TOKEN = "ftops.lock.token"
TAG_SINCE = "ftops.lock.since"
# pg_advisory_lock's key: one 64-bit number for the ftops registry, the same in every process
ADVISORY_KEY = int.from_bytes(hashlib.sha256(b"ftops.registry.lock").digest()[:8], "big", signed=True)
_POLL_S = 0.2


def _waiting(where: str) -> None:
    print(f"waiting for the registry lock ({where}): another promotion is running", file=sys.stderr, flush=True)


@contextmanager
def registry_lock() -> Iterator[None]:
    """Serialize registry read-modify-writes between processes, on this machine or several (see the module doc)."""
    url = FTOPS_REGISTRY_LOCK_URL.get()
    if url:
        with _advisory_lock(url):
            yield
    elif settings.is_embedded():
        with _file_lock():
            yield
    else:
        with _registry_model_lock():
            yield


@contextmanager
def _file_lock() -> Iterator[None]:
    home = settings.home()
    home.mkdir(parents=True, exist_ok=True)
    path = home / "registry.lock"
    lock = FileLock(str(path))
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            _waiting(str(path))
            lock.acquire(timeout=LOCK_TIMEOUT_S)
    except Timeout as e:
        raise FtopsError(
            f"{path}: another promotion held the registry lock for "
            f"{LOCK_TIMEOUT_S} s; retry, or remove the file if no ftops process is running"
        ) from e
    try:
        yield
    finally:
        lock.release()


@contextmanager
def _advisory_lock(url: str) -> Iterator[None]:
    import sqlalchemy as sa  # heavy (about 1 s): only a PostgreSQL lock needs it
    from sqlalchemy.pool import NullPool

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        parsed = None
    if parsed is None or parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise FtopsError(f"{LOCK_URL_ENV}: not a PostgreSQL URL (postgresql://USER:PASSWORD@HOST:PORT/DB)")
    if parsed.drivername in ("postgresql", "postgres"):  # SQLAlchemy 2.1 would pick psycopg 3; ftops ships psycopg2
        parsed = parsed.set(drivername="postgresql+psycopg2")
    where = f"PostgreSQL advisory lock {ADVISORY_KEY} at {parsed.render_as_string(hide_password=True)}"
    engine = sa.create_engine(parsed, poolclass=NullPool)
    try:
        # autocommit: the lock belongs to the session; no transaction stays open while it is held
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        if not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_KEY}).scalar():
            _waiting(where)
            conn.execute(sa.text(f"SET lock_timeout = '{LOCK_TIMEOUT_S}s'"))
            try:
                conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_KEY})
            except sa.exc.OperationalError:
                raise FtopsError(
                    f"{where}: another promotion held the registry lock for {LOCK_TIMEOUT_S} s; retry (the holder: "
                    "SELECT pid, client_addr FROM pg_stat_activity JOIN pg_locks USING (pid) "
                    "WHERE locktype = 'advisory')"
                ) from None
    except sa.exc.SQLAlchemyError as e:
        engine.dispose()
        raise FtopsError(f"{where}: cannot take the registry lock ({getattr(e, 'orig', None) or e})") from None
    try:
        yield
    finally:
        try:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
        except sa.exc.SQLAlchemyError:
            pass  # the session is gone, and its lock with it
        conn.close()
        engine.dispose()


def _holder() -> str:
    return f"{FTOPS_ACTOR.get() or socket.gethostname()} pid {os.getpid()}"


@contextmanager
def _registry_model_lock() -> Iterator[None]:
    from mlflow.exceptions import MlflowException  # heavy: mlflow loads when the registry is read

    client = settings.mlflow_client()
    token = uuid.uuid4().hex
    tags = {TAG_HOLDER: _holder(), TAG_TOKEN: token, TAG_SINCE: datetime.now(UTC).isoformat(timespec="seconds")}
    where = f"registered model {LOCK_MODEL} on the tracking server ($MLFLOW_TRACKING_URI)"
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    waited = False
    while True:
        try:
            client.create_registered_model(
                LOCK_MODEL,
                tags=tags,
                description="ftops's registry lock: exists while a gate, promote or rollback changes aliases. "
                "Delete it only if the holder in its tags is no longer running.",
            )
            break
        except MlflowException as e:
            # RESOURCE_DOES_NOT_EXIST is contention too: the SQL stores answer a duplicate create by reading the
            # existing model, and the holder may delete it between the two (the lock was just released)
            if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                raise FtopsError(f"{where}: cannot take the registry lock ({e.message})") from None
            if _lock_tags(client).get(TAG_TOKEN) == token:
                break  # our own create, retried by MLflow's HTTP client after its first answer was lost
        if time.monotonic() > deadline:
            held = _lock_tags(client)
            raise FtopsError(
                f"{where}: held by {held.get(TAG_HOLDER, '?')} since {held.get(TAG_SINCE, '?')} for over "
                f"{LOCK_TIMEOUT_S} s; retry, or if that process is gone delete registered model {LOCK_MODEL} "
                "in the MLflow UI"
            )
        if not waited:
            _waiting(where)
            waited = True
        time.sleep(_POLL_S)
    try:
        yield
    finally:
        # ours still (nobody deleted it by hand and took it since): release it
        if _lock_tags(client).get(TAG_TOKEN) == token:
            client.delete_registered_model(LOCK_MODEL)


def _lock_tags(client) -> dict:
    from mlflow.exceptions import MlflowException  # heavy: mlflow loads when the registry is read

    try:
        return dict(client.get_registered_model(LOCK_MODEL).tags)
    except MlflowException:
        return {}
