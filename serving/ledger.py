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

This module is the ledger's API; its parts: ``ledger_schema`` (the table, the engine, the upgrades: Alembic revisions
under ``ledger_migrations/``), ``ledger_rows`` (a row's fields, checks and reading back), ``ledger_spool``,
``ledger_replica`` (:func:`replica_id`) and ``ledger_metrics`` (the Prometheus counters).
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self

import sqlalchemy as sa

from ftops.costs.tables import HardwareTable, PriceTable, check_replica_env, load_hardware, load_prices
from ftops.costs.usage import UNRECORDED_REPLICA, BusyClock
from ftops.errors import FtopsError
from ftops.redact import redact
from ftops.serving.ledger_metrics import REPLAYED_ROWS, count
from ftops.serving.ledger_replica import replica_id
from ftops.serving.ledger_rows import STATUSES, Status, build_row, check, read_row, utc
from ftops.serving.ledger_schema import (
    ADDED_COLUMNS,
    create_engine,
    create_or_upgrade,
    default_url,
    first_line,
    requests_table,
)
from ftops.serving.ledger_spool import Spool, spool_path, to_spool

__all__ = [
    "STATUSES",
    "UNRECORDED_REPLICA",
    "Ledger",
    "Spool",
    "Status",
    "default_url",
    "replica_id",
    "spool_path",
    "spool_row",
]

log = logging.getLogger("ftops.serving")


def spool_row(url: str | None, **fields) -> dict:
    """Record a request while no :class:`Ledger` is open (the service still starting, or its database down at start):
    the row goes straight to the spool of ``url``, for the next ``Ledger`` opened on it. Same arguments as
    :meth:`Ledger.record`; the costs are stamped as zero (such requests never reached the engine)."""
    fields = {"at": None, "http_status": None, "error": None, **fields}
    check(**fields)
    row = build_row(
        **fields, replica=replica_id(), hardware=load_hardware().default, self_hosted_usd=0.0, hosted_usd={}
    )
    to_spool(Spool(spool_path(url)), row, url or default_url(), "no ledger is open")
    count(row)
    return read_row(row)


class Ledger:
    """Durable, thread-safe request ledger.

    ``url``: SQLAlchemy URL; ``None`` means ``sqlite:///$FTOPS_HOME/ledger.db``. ``prices``/``hardware``: the tables
    (default: the YAML files of ``costs/``, see :func:`ftops.costs.tables.load_prices`). ``hardware_profile``:
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
            self._engine = create_engine(self.url)
            create_or_upgrade(self._engine, move_rows=create)
        except ModuleNotFoundError as e:
            raise FtopsError(
                f"ledger {shown!r}: the database driver {e.name!r} is not installed "
                f"(for PostgreSQL: pip install 'psycopg[binary]' or psycopg2-binary)"
            ) from e
        except sa.exc.SQLAlchemyError as e:
            raise FtopsError(f"ledger {shown!r}: cannot open the database ({first_line(e)})") from e
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
        check(**fields)
        fields["at"] = utc(at) if at is not None else datetime.now(UTC)
        hosted = self.prices.hosted_cost(prompt_tokens, completion_tokens)
        with self._lock:
            row = self._stamped(fields, hosted)
            self._write(row)
        count(row)
        return read_row(row)

    def flush(self) -> int:
        """Write the spooled rows to the database now (those already there are skipped); how many were written.
        Raises :class:`FtopsError` when the database still cannot be written."""
        with self._lock:
            try:
                written = self._flush_spool()
            except sa.exc.SQLAlchemyError as e:
                self._went_down(e)
                raise FtopsError(f"ledger {redact(self.url)!r}: still cannot write ({first_line(e)})") from e
            self._down = False
            return written

    def rows(self, since: datetime | None = None) -> list[dict]:
        """All rows (oldest first), or those that ended at or after ``since``. Times are timezone-aware UTC; rows an
        older ftops wrote have ``replica`` :data:`UNRECORDED_REPLICA` and its hardware profile in ``hardware``."""
        query = sa.select(requests_table).order_by(requests_table.c.ts, requests_table.c.id)
        if since is not None:
            query = query.where(requests_table.c.ts >= utc(since).replace(tzinfo=None))
        with self._engine.connect() as conn:
            return [read_row(dict(r._mapping)) for r in conn.execute(query)]

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

    # ------------------------------------------------------------------------------------------ one row
    def _stamped(self, fields: dict, hosted_usd: dict[str, float]) -> dict:
        """The row of ``fields`` (``at`` set: when it ended), stamped with this replica, its hardware and the
        self-hosted cost at the throughput this process has measured so far. Caller holds ``self._lock``."""
        ended = fields["at"]
        tokens = fields["prompt_tokens"] + fields["completion_tokens"]
        start = ended - timedelta(seconds=fields["latency_s"])
        return build_row(
            **fields,
            replica=self.replica,
            hardware=self.hardware_profile,
            self_hosted_usd=self._clock.charge(start, ended, tokens, self.instance.usd_per_hour),
            hosted_usd=hosted_usd,
        )

    def _write(self, row: dict) -> None:
        """Commit ``row`` (its ``id`` set), the spooled rows before it; spool it when the database cannot take it.
        Caller holds ``self._lock``."""
        if self._down:  # the retry thread writes the spool back; meanwhile a request does not wait on the database
            to_spool(self.spool, row, self.url, "the database is down")
            return
        try:
            if self.spool.pending():  # older rows first (spooled by another process, or before this Ledger)
                self._flush_spool_or_log()
            with self._engine.begin() as conn:  # committed when the block exits
                row["id"] = conn.execute(requests_table.insert().values(**row)).inserted_primary_key[0]
        except sa.exc.SQLAlchemyError as e:
            self._went_down(e)
            to_spool(self.spool, row, self.url, first_line(e))

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
                    new.append(added | row | {"ts": utc(r["ts"]).replace(tzinfo=None)})
            if new:
                conn.execute(requests_table.insert(), new)
        return len(new)

    def _went_down(self, e: Exception) -> None:
        """Caller holds ``self._lock``. Spool from now on; a background thread writes the spool back when it can."""
        if not self._down:
            log.error(
                "ledger %s: cannot write (%s); rows go to %s until it answers again",
                redact(self.url),
                first_line(e),
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
                    log.warning("ledger %s: still cannot write (%s)", redact(self.url), first_line(e))
                    wait = min(wait * 2, self.retry_s)
                    continue
                self._down = False
                return
