"""The request ledger: one durable row per served request, with its tokens and what it cost.

The service calls :meth:`Ledger.record` once per request, whatever its end (``ok``, ``cancelled`` with the tokens
streamed so far, ``failed`` with its error, ``refused`` before the engine with the HTTP status and reason). A row is
committed before ``record`` returns: SQLite in WAL mode by default (``$FTOPS_HOME/ledger.db``), any SQLAlchemy URL
(``postgresql://...``) otherwise.

Nothing is lost when the database cannot be written: the row goes to an append-only spool under ``$FTOPS_HOME``
(one JSON line per row, fsync'd, see :class:`Spool`), and the spooled rows are written, once each (by row id),
as soon as the database answers again: by a background retry, by the next ``record`` and by the next ``Ledger``
opened on the same URL. ``ftops_ledger_spooled_rows_total`` and ``ftops_ledger_failed_rows_total`` (rows neither the
database nor the spool could take) count them on ``/metrics``.

Each row is stamped with the time it was recorded, the replica that served it (``replica``: which server process,
see :func:`replica_id`), the hardware profile that replica runs on (``hardware``: a ``costs/hardware.yaml``
instance), its self-hosted cost estimate and its hosted-equivalent cost for every model of ``costs/prices.yaml``;
the same call increments the Prometheus counters that the service's ``/metrics`` exposes. Several replicas may write
one ledger (PostgreSQL); each replica's busy time is its own. The cost model is stated in ``docs/cost.md``;
``ftops cost report`` recomputes every figure from the rows and the two tables, per replica.

Ledgers made by an older ftops, whose ``replica`` column held the hardware profile, are upgraded when opened: the
``hardware`` column is added and takes the old value, and ``replica`` becomes :data:`UNRECORDED_REPLICA` (which
server wrote such a row is not known). Rows that an older ftops still writes during a rolling upgrade are read the
same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, Self

import sqlalchemy as sa
from filelock import FileLock
from prometheus_client import Counter

from ftops import settings
from ftops.costs.model import BusyClock, HardwareTable, PriceTable, check_replica_env, load_hardware, load_prices
from ftops.env import FTOPS_REPLICA
from ftops.errors import FtopsError
from ftops.redact import redact

log = logging.getLogger("ftops.serving")

Status = Literal["ok", "cancelled", "failed", "refused"]
STATUSES: tuple[str, ...] = ("ok", "cancelled", "failed", "refused")
ERROR_CHARS = 500  # the stored reason is cut to this length
REPLICA_CHARS = 100  # the longest replica id the column holds
REPLICA_ENV = FTOPS_REPLICA.name
POD_NAME_ENV = "POD_NAME"  # Kubernetes' downward API (k8s/base/serving.yaml sets it)
#: ``replica`` of the rows written before ledgers recorded replicas (which server wrote them is not known)
UNRECORDED_REPLICA = "(unrecorded)"
MIGRATION_LOCK_KEY = 0x66746F7073  # PostgreSQL advisory lock ("ftops") that serializes the upgrade of the table

metadata = sa.MetaData()
requests_table = sa.Table(
    "ftops_requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.DateTime, nullable=False, index=True),  # UTC, naive in the database: when the request ended
    sa.Column("request_id", sa.String(200), nullable=False, index=True),
    sa.Column("api_key_id", sa.String(200), nullable=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("adapter", sa.String(200), nullable=True),
    sa.Column("registry_version", sa.String(100), nullable=True),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("latency_s", sa.Float, nullable=False),
    sa.Column("ttft_s", sa.Float, nullable=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("replica", sa.String(REPLICA_CHARS), nullable=False),  # the server process: see replica_id()
    sa.Column("self_hosted_usd", sa.Float, nullable=False),
    sa.Column("hosted_usd", sa.JSON, nullable=False),  # {price table key: usd}
    sa.Column("http_status", sa.Integer, nullable=True),  # what the client got (added 2026-12; NULL on older rows)
    sa.Column("error", sa.String(ERROR_CHARS), nullable=True),  # why it failed or was refused (redacted)
    # the hardware.yaml instance the replica runs on (added 2026-12; before, ``replica`` held it). Nullable so that an
    # older ftops can still insert during a rolling upgrade; such rows are read as unrecorded (see _out)
    sa.Column("hardware", sa.String(100), nullable=True),
    # one random id per row (added 2026-12): what the spool write-back deduplicates on. A client may send one
    # X-Request-Id with several requests (retries, a fixed header), and each is a row of its own
    sa.Column("row_id", sa.String(32), nullable=True, index=True),
)
#: added to a ledger table created before them, when it is opened
ADDED_COLUMNS = ("http_status", "error", "hardware", "row_id")

# Prometheus counters in the default registry (created once per process; the service's /metrics exposes them).
TOKENS = Counter(
    "ftops_tokens",
    "Tokens served, by model, adapter and kind (prompt|completion)",
    ["model", "adapter", "kind"],
)
REQUESTS = Counter(
    "ftops_requests",
    "Requests recorded in the ledger, by model, adapter and status",
    ["model", "adapter", "status"],
)
SELF_HOSTED_USD = Counter(
    "ftops_self_hosted_cost_usd", "Self-hosted cost stamped on ledger rows (USD)", ["model", "adapter"]
)
HOSTED_USD = Counter(
    "ftops_hosted_equivalent_cost_usd",
    "What the same tokens would have cost on a hosted API (USD), per price table entry",
    ["model", "adapter", "hosted_model"],
)
SPOOLED_ROWS = Counter(
    "ftops_ledger_spooled_rows",
    "Ledger rows written to the local spool because the ledger database could not be written",
)
FAILED_ROWS = Counter(
    "ftops_ledger_failed_rows",
    "Ledger rows lost: neither the ledger database nor the local spool could take them",
)
REPLAYED_ROWS = Counter(
    "ftops_ledger_replayed_rows",
    "Spooled ledger rows written to the database once it answered again (rows already there are skipped)",
)


def replica_id(explicit: str | None = None) -> str:
    """Which server process writes the rows: ``explicit``, else ``$FTOPS_REPLICA``, else ``$POD_NAME`` (the pod's
    name, one server per pod), else ``HOST:PID`` (two servers on one machine sharing a ledger stay apart; a restart
    is a new replica, whose busy time never overlaps the old one's). At most 100 characters."""
    env = (FTOPS_REPLICA.get() or "").strip()
    for value, source in ((explicit, "replica"), (env or None, REPLICA_ENV)):
        if value is None:
            continue
        value = value.strip()
        if not value or len(value) > REPLICA_CHARS or value == UNRECORDED_REPLICA:
            raise FtopsError(
                f"{source} {value!r}: a replica id is 1 to {REPLICA_CHARS} characters and not {UNRECORDED_REPLICA!r}; "
                f"name this server (its host or pod), e.g. {REPLICA_ENV}=$(hostname), or leave {REPLICA_ENV} unset"
            )
        return value
    if pod := os.environ.get(POD_NAME_ENV, "").strip():
        return pod[:REPLICA_CHARS]
    pid = f":{os.getpid()}"
    return socket.gethostname()[: REPLICA_CHARS - len(pid)] + pid


def default_url() -> str:
    """``sqlite:///$FTOPS_HOME/ledger.db``."""
    return f"sqlite:///{settings.home() / 'ledger.db'}"


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


def spool_row(url: str | None, **fields) -> dict:
    """Record a request while no :class:`Ledger` is open (the service still starting, or its database down at start):
    the row goes straight to the spool of ``url``, for the next ``Ledger`` opened on it. Same arguments as
    :meth:`Ledger.record`; the costs are stamped as zero (such requests never reached the engine)."""
    fields = {"at": None, "http_status": None, "error": None, **fields}
    _check(**fields)
    row = _row(**fields, replica=replica_id(), hardware=load_hardware().default, self_hosted_usd=0.0, hosted_usd={})
    _spool(Spool(spool_path(url)), row, url or default_url(), "no ledger is open")
    _count(row)
    return _out(row)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")  # a committed row survives a crash of the process or the machine
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class Ledger:
    """Durable, thread-safe request ledger.

    ``url``: SQLAlchemy URL; ``None`` means ``sqlite:///$FTOPS_HOME/ledger.db``. ``prices``/``hardware``: the tables
    (default: the YAML files next to this module, see :func:`ftops.costs.model.load_prices`). ``hardware_profile``:
    the ``hardware.yaml`` instance this server runs on (default: the table's ``default``, which
    ``$FTOPS_HARDWARE_PROFILE`` sets). ``replica``: this server's id on the rows it writes (default:
    :func:`replica_id`). ``create=False``: refuse a SQLite file that does not exist yet (for readers such as the
    report) instead of creating it, and leave the spool to the writer. ``retry_s``: the longest wait between two
    attempts to write the spool back while the database is down (the first waits 1 s, then each doubles).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        prices: PriceTable | None = None,
        hardware: HardwareTable | None = None,
        hardware_profile: str | None = None,
        replica: str | None = None,
        create: bool = True,
        retry_s: float = 30.0,
    ) -> None:
        self.url = url or default_url()
        self.prices = prices or load_prices()
        self.hardware = hardware or load_hardware()
        check_replica_env(self.hardware)
        self.hardware_profile = hardware_profile or self.hardware.default
        self.instance = self.hardware.instance(self.hardware_profile)
        self.replica = replica_id(replica)
        self.spool = Spool(spool_path(self.url))
        self.retry_s = retry_s
        shown = redact(self.url)
        if self.url.startswith("sqlite:///"):
            db = self.url.removeprefix("sqlite:///")
            if db and db != ":memory:":
                if not create and not Path(db).is_file():
                    raise FtopsError(
                        f"no ledger at {db}: nothing has been served with this ledger yet; start "
                        f"`ftops serve` (same FTOPS_HOME), or pass --ledger URL"
                    )
                Path(db).parent.mkdir(parents=True, exist_ok=True)
        try:
            connect_args = {"connect_timeout": 10} if self.url.startswith(("postgresql", "postgres:")) else {}
            self._engine = sa.create_engine(
                _with_installed_driver(self.url), pool_pre_ping=True, connect_args=connect_args
            )
            if self._engine.dialect.name == "sqlite":
                sa.event.listen(self._engine, "connect", _sqlite_pragmas)
            _create_or_upgrade(self._engine, move_rows=create)
        except ModuleNotFoundError as e:
            raise FtopsError(
                f"ledger {shown!r}: the database driver {e.name!r} is not installed "
                f"(for PostgreSQL: pip install 'psycopg[binary]' or psycopg2-binary)"
            ) from e
        except sa.exc.SQLAlchemyError as e:
            raise FtopsError(f"ledger {shown!r}: cannot open the database ({_first_line(e)})") from e
        self._lock = threading.Lock()
        self._clock = BusyClock()  # busy time and tokens seen by this process: the running throughput estimate
        self._down = False  # the last write failed: spool directly until the retry thread has written the spool back
        self._closed = threading.Event()
        self._retry: threading.Thread | None = None
        if create and self.spool.pending():
            with self._lock:
                try:
                    self._flush_spool_or_log()
                except sa.exc.SQLAlchemyError as e:
                    self._went_down(e)

    def record(
        self,
        *,
        request_id: str,
        api_key_id: str | None,
        model: str,
        adapter: str | None,
        registry_version: str | int | None,
        prompt_tokens: int,
        completion_tokens: int,
        latency_s: float,
        ttft_s: float | None,
        status: Status,
        at: datetime | None = None,
        http_status: int | None = None,
        error: str | None = None,
    ) -> dict:
        """Commit one row and return it (as :meth:`rows` would). Synchronous, thread-safe, durable.

        ``at`` is when the request ended (default: now, UTC); it started ``latency_s`` before. Tokens must equal the
        ``usage`` returned to the client (for a cancelled stream: the tokens produced before the cancel).
        ``http_status`` is the status the client got, ``error`` why it failed or was refused (stored redacted).
        When the database cannot be written the row is spooled (its ``id`` is then None) and written back later.
        """
        fields = dict(
            request_id=request_id,
            api_key_id=api_key_id,
            model=model,
            adapter=adapter,
            registry_version=registry_version,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=latency_s,
            ttft_s=ttft_s,
            status=status,
            at=at,
            http_status=http_status,
            error=error,
        )
        _check(**fields)
        ended = _utc(at) if at is not None else datetime.now(UTC)
        tokens = prompt_tokens + completion_tokens
        hosted = self.prices.hosted_cost(prompt_tokens, completion_tokens)
        with self._lock:
            busy_s, seen_tokens = self._clock.add(ended - timedelta(seconds=latency_s), ended, tokens)
            # tokens x (usd per hour / 3600 / measured throughput), throughput = tokens / busy time seen so far
            self_hosted = tokens * self.instance.usd_per_hour / 3600 * (busy_s / seen_tokens) if seen_tokens else 0.0
            row = _row(
                **{**fields, "at": ended},
                replica=self.replica,
                hardware=self.hardware_profile,
                self_hosted_usd=self_hosted,
                hosted_usd=hosted,
            )
            if self._down:  # the retry thread writes the spool back; meanwhile a request does not wait on the database
                _spool(self.spool, row, self.url, "the database is down")
            else:
                try:
                    if self.spool.pending():  # older rows first (spooled by another process, or before this Ledger)
                        self._flush_spool_or_log()
                    with self._engine.begin() as conn:  # committed when the block exits
                        row["id"] = conn.execute(requests_table.insert().values(**row)).inserted_primary_key[0]
                except sa.exc.SQLAlchemyError as e:
                    self._went_down(e)
                    _spool(self.spool, row, self.url, _first_line(e))
        _count(row)
        return _out(row)

    def flush(self) -> int:
        """Write the spooled rows to the database now (those already there are skipped); how many were written.
        Raises :class:`FtopsError` when the database still cannot be written."""
        with self._lock:
            try:
                written = self._flush_spool()
            except sa.exc.SQLAlchemyError as e:
                self._went_down(e)
                raise FtopsError(f"ledger {redact(self.url)!r}: still cannot write ({_first_line(e)})") from e
            self._down = False
            return written

    def rows(self, since: datetime | None = None) -> list[dict]:
        """All rows (oldest first), or those that ended at or after ``since``. Times are timezone-aware UTC; rows an
        older ftops wrote have ``replica`` :data:`UNRECORDED_REPLICA` and its hardware profile in ``hardware``."""
        query = sa.select(requests_table).order_by(requests_table.c.ts, requests_table.c.id)
        if since is not None:
            query = query.where(requests_table.c.ts >= _utc(since).replace(tzinfo=None))
        with self._engine.connect() as conn:
            return [_out(dict(r._mapping)) for r in conn.execute(query)]

    def close(self) -> None:
        """Release the database connections. Every recorded row is committed or spooled (fsync'd)."""
        self._closed.set()
        if self._retry is not None:
            self._retry.join()
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ the spool
    def _flush_spool(self) -> int:
        """Write the spool back (caller holds ``self._lock``); raises SQLAlchemyError when the database is down."""
        written = self.spool.drain(self._insert_missing)
        if written:
            REPLAYED_ROWS.inc(written)
            log.info("ledger %s: wrote %d spooled rows from %s", redact(self.url), written, self.spool.path)
        return written

    def _flush_spool_or_log(self) -> None:
        """:meth:`_flush_spool`, where an unreadable spool file is logged (the database is still written)."""
        try:
            self._flush_spool()
        except OSError as e:
            log.error("ledger spool %s: cannot be read back (%s); its rows stay in it", self.spool.path, e)

    def _insert_missing(self, rows: list[dict]) -> int:
        """Insert, in one transaction, the rows the table does not hold yet, by ``row_id`` (rows an older ftops
        spooled have none: by request id): a replay interrupted after its commit (or spooled twice) writes nothing
        twice, and two requests that share a client's X-Request-Id stay two rows."""
        with self._engine.begin() as conn:
            present: set[tuple[str, str]] = set()
            by_row = sorted({r["row_id"] for r in rows if r.get("row_id")})
            by_request = sorted({r["request_id"] for r in rows if not r.get("row_id")})
            for column, wanted in (("row_id", by_row), ("request_id", by_request)):
                for i in range(0, len(wanted), 500):
                    query = sa.select(requests_table.c[column]).where(requests_table.c[column].in_(wanted[i : i + 500]))
                    present.update((column, v) for v in conn.execute(query).scalars())
            new = []
            for r in rows:
                key = ("row_id", r["row_id"]) if r.get("row_id") else ("request_id", r["request_id"])
                if key not in present:
                    present.add(key)
                    # a row an older ftops spooled lacks the added columns: NULL, as that ftops would have written it
                    added = dict.fromkeys(ADDED_COLUMNS)
                    row = {k: v for k, v in r.items() if k != "id" and k in requests_table.c}
                    new.append(added | row | {"ts": _utc(r["ts"]).replace(tzinfo=None)})
            if new:
                conn.execute(requests_table.insert(), new)
        return len(new)

    def _went_down(self, e: Exception) -> None:
        """Caller holds ``self._lock``. Spool from now on; a background thread writes the spool back when it can."""
        if not self._down:
            log.error(
                "ledger %s: cannot write (%s); rows go to %s until it answers again",
                redact(self.url),
                _first_line(e),
                self.spool.path,
            )
        self._down = True
        if self._retry is None or not self._retry.is_alive():
            self._retry = threading.Thread(target=self._retry_loop, name="ftops-ledger-retry", daemon=True)
            self._retry.start()

    def _retry_loop(self) -> None:
        wait = 1.0
        while not self._closed.wait(wait):
            with self._lock:
                try:
                    self._flush_spool_or_log()
                except sa.exc.SQLAlchemyError as e:
                    log.warning("ledger %s: still cannot write (%s)", redact(self.url), _first_line(e))
                    wait = min(wait * 2, self.retry_s)
                    continue
                self._down = False
                return


def _create_or_upgrade(engine: sa.Engine, move_rows: bool = True) -> None:
    """Create the table, or bring one made by an older ftops up to date, in one transaction that concurrent openers
    take in turn (a PostgreSQL advisory lock; a file lock beside a SQLite file). ``move_rows=False`` (a reader, which
    may hold read-only credentials): leave old rows as they are; :meth:`Ledger.rows` reads them the same way."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:  # released when the transaction ends (PostgreSQL DDL is transactional)
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            _upgrade(conn, move_rows)
        return
    db = engine.url.database if engine.dialect.name == "sqlite" else None
    folder = Path(db).resolve().parent if db and db != ":memory:" else None
    lock = FileLock(f"{db}.upgrade.lock") if folder is not None and os.access(folder, os.W_OK) else None
    if lock is None:  # another database, or a read-only folder (which this opener could not upgrade anyway)
        with engine.begin() as conn:
            _upgrade(conn, move_rows)
        return
    with lock, engine.begin() as conn:
        _upgrade(conn, move_rows)


def _upgrade(conn: sa.Connection, move_rows: bool) -> None:
    """Create the table; add the columns and indexes a table made by an older ftops lacks; with ``move_rows``, move
    the hardware profile that such a table's rows kept in ``replica`` to ``hardware``. Idempotent: a second run
    changes nothing."""
    metadata.create_all(conn)
    inspector = sa.inspect(conn)
    have = {c["name"] for c in inspector.get_columns(requests_table.name)}
    indexes = {i["name"] for i in inspector.get_indexes(requests_table.name)}
    for name in ADDED_COLUMNS:
        if name not in have:
            kind = requests_table.c[name].type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {requests_table.name} ADD COLUMN {name} {kind}"))
    for index in requests_table.indexes:
        if index.name not in indexes:
            index.create(conn, checkfirst=True)
    t = requests_table.c
    if move_rows and conn.execute(sa.select(t.id).where(t.hardware.is_(None)).limit(1)).first() is not None:
        # every right-hand side reads the row as it was (hardware is assigned first for MySQL, which does not)
        conn.execute(
            requests_table.update()
            .where(t.hardware.is_(None))
            .ordered_values((t.hardware, t.replica), (t.replica, UNRECORDED_REPLICA))
        )


def _check(*, status, prompt_tokens, completion_tokens, latency_s, ttft_s, http_status, **_) -> None:
    if status not in STATUSES:
        raise FtopsError(f"ledger.record: status {status!r} is not one of {', '.join(STATUSES)}")
    for name, value in (("prompt_tokens", prompt_tokens), ("completion_tokens", completion_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise FtopsError(f"ledger.record: {name} must be a non-negative integer, got {value!r}")
    if latency_s is None or latency_s < 0 or (ttft_s is not None and ttft_s < 0):
        raise FtopsError(f"ledger.record: latency_s/ttft_s must be >= 0, got {latency_s!r}/{ttft_s!r}")
    if http_status is not None and (isinstance(http_status, bool) or not isinstance(http_status, int)):
        raise FtopsError(f"ledger.record: http_status must be an integer or None, got {http_status!r}")


def _row(
    *,
    request_id,
    api_key_id,
    model,
    adapter,
    registry_version,
    prompt_tokens,
    completion_tokens,
    latency_s,
    ttft_s,
    status,
    at,
    http_status,
    error,
    replica,
    hardware,
    self_hosted_usd,
    hosted_usd,
) -> dict:
    ended = _utc(at) if at is not None else datetime.now(UTC)
    return {
        "ts": ended.replace(tzinfo=None),
        "request_id": str(request_id),
        "api_key_id": None if api_key_id is None else str(api_key_id),
        "model": str(model),
        "adapter": None if adapter is None else str(adapter),
        "registry_version": None if registry_version is None else str(registry_version),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "latency_s": float(latency_s),
        "ttft_s": None if ttft_s is None else float(ttft_s),
        "status": status,
        "replica": replica,
        "hardware": hardware,
        "self_hosted_usd": self_hosted_usd,
        "hosted_usd": hosted_usd,
        "http_status": http_status,
        "error": None if error is None else redact(error)[:ERROR_CHARS],
        "row_id": uuid.uuid4().hex,
    }


def _spool(spool: Spool, row: dict, url: str, why: str) -> None:
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


def _count(row: dict) -> None:
    labels = {"model": row["model"], "adapter": row["adapter"] or ""}
    TOKENS.labels(kind="prompt", **labels).inc(row["prompt_tokens"])
    TOKENS.labels(kind="completion", **labels).inc(row["completion_tokens"])
    REQUESTS.labels(status=row["status"], **labels).inc()
    SELF_HOSTED_USD.labels(**labels).inc(row["self_hosted_usd"])
    for key, usd in row["hosted_usd"].items():
        HOSTED_USD.labels(hosted_model=key, **labels).inc(usd)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _first_line(e: Exception) -> str:
    return redact(f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def _with_installed_driver(url: str) -> str:
    """``postgresql://`` means psycopg 3 to SQLAlchemy 2.1; use psycopg2 when only that one is installed."""
    import importlib.util

    if (
        url.startswith(("postgresql://", "postgres://"))
        and importlib.util.find_spec("psycopg") is None
        and importlib.util.find_spec("psycopg2") is not None
    ):
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def _utc(t: datetime) -> datetime:
    """Naive datetimes are taken as UTC."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _out(row: dict) -> dict:
    out = dict(row)
    out["ts"] = _utc(out["ts"])
    if out.get("hardware") is None:  # written by an older ftops after the upgrade: its replica column held the hardware
        out["hardware"], out["replica"] = out["replica"], UNRECORDED_REPLICA
    return out
