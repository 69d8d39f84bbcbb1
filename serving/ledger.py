"""The request ledger: one durable row per served request, with its tokens and what it cost.

The service calls :meth:`Ledger.record` once per request, whatever its end (``ok``, ``cancelled`` with the tokens
streamed so far, ``failed``). A row is committed before ``record`` returns: SQLite in WAL mode by default
(``$FTOPS_HOME/ledger.db``), any SQLAlchemy URL (``postgresql://...``) otherwise.

Each row is stamped with the time it was recorded, the replica it ran on (``serving/hardware.yaml``), its
self-hosted cost estimate and its hosted-equivalent cost for every model of ``serving/prices.yaml``; the same call
increments the Prometheus counters that the service's ``/metrics`` exposes. The cost model is stated in
``docs/cost.md``; ``ftops cost report`` recomputes every figure from the rows and the two tables.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Literal, Self

import sqlalchemy as sa
from prometheus_client import Counter

from ftops import settings
from ftops.errors import FtopsError
from ftops.serving.costs import BusyClock, HardwareTable, PriceTable, load_hardware, load_prices

Status = Literal["ok", "cancelled", "failed"]
STATUSES: tuple[str, ...] = ("ok", "cancelled", "failed")

metadata = sa.MetaData()
requests_table = sa.Table(
    "ftops_requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.DateTime, nullable=False, index=True),  # UTC, naive in the database: when the request ended
    sa.Column("request_id", sa.String(200), nullable=False),
    sa.Column("api_key_id", sa.String(200), nullable=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("adapter", sa.String(200), nullable=True),
    sa.Column("registry_version", sa.String(100), nullable=True),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("latency_s", sa.Float, nullable=False),
    sa.Column("ttft_s", sa.Float, nullable=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("replica", sa.String(100), nullable=False),
    sa.Column("self_hosted_usd", sa.Float, nullable=False),
    sa.Column("hosted_usd", sa.JSON, nullable=False),  # {price table key: usd}
)

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


def default_url() -> str:
    """``sqlite:///$FTOPS_HOME/ledger.db``."""
    return f"sqlite:///{settings.home() / 'ledger.db'}"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")  # a committed row survives a crash of the process or the machine
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class Ledger:
    """Durable, thread-safe request ledger.

    ``url``: SQLAlchemy URL; ``None`` means ``sqlite:///$FTOPS_HOME/ledger.db``. ``prices``/``hardware``: the tables
    (default: the YAML files next to this module, see :func:`ftops.serving.costs.load_prices`). ``replica``: the
    ``hardware.yaml`` instance this server runs on (default: the table's ``default``). ``create=False``: refuse a
    SQLite file that does not exist yet (for readers such as the report) instead of creating it.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        prices: PriceTable | None = None,
        hardware: HardwareTable | None = None,
        replica: str | None = None,
        create: bool = True,
    ) -> None:
        self.url = url or default_url()
        self.prices = prices or load_prices()
        self.hardware = hardware or load_hardware()
        self.replica = replica or self.hardware.default
        self.instance = self.hardware.instance(self.replica)
        if self.url.startswith("sqlite:///"):
            from pathlib import Path

            db = self.url.removeprefix("sqlite:///")
            if db and db != ":memory:":
                if not create and not Path(db).is_file():
                    raise FtopsError(
                        f"no ledger at {db}: nothing has been served with this ledger yet; start "
                        f"`ftops serve` (same FTOPS_HOME), or pass --ledger URL"
                    )
                Path(db).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._engine = sa.create_engine(_with_installed_driver(self.url), pool_pre_ping=True)
            if self._engine.dialect.name == "sqlite":
                sa.event.listen(self._engine, "connect", _sqlite_pragmas)
            metadata.create_all(self._engine)
        except ModuleNotFoundError as e:
            raise FtopsError(
                f"ledger {self.url!r}: the database driver {e.name!r} is not installed "
                f"(for PostgreSQL: pip install 'psycopg[binary]' or psycopg2-binary)"
            ) from e
        except sa.exc.SQLAlchemyError as e:
            raise FtopsError(
                f"ledger {self.url!r}: cannot open the database ({e.__class__.__name__}: {str(e).splitlines()[0]})"
            ) from e
        self._lock = threading.Lock()
        self._clock = BusyClock()  # busy time and tokens seen by this process: the running throughput estimate

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
    ) -> dict:
        """Commit one row and return it (as :meth:`rows` would). Synchronous, thread-safe, durable.

        ``at`` is when the request ended (default: now, UTC); it started ``latency_s`` before. Tokens must equal the
        ``usage`` returned to the client (for a cancelled stream: the tokens produced before the cancel).
        """
        if status not in STATUSES:
            raise FtopsError(f"ledger.record: status {status!r} is not one of {', '.join(STATUSES)}")
        for name, value in (("prompt_tokens", prompt_tokens), ("completion_tokens", completion_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise FtopsError(f"ledger.record: {name} must be a non-negative integer, got {value!r}")
        if latency_s is None or latency_s < 0 or (ttft_s is not None and ttft_s < 0):
            raise FtopsError(f"ledger.record: latency_s/ttft_s must be >= 0, got {latency_s!r}/{ttft_s!r}")
        ended = _utc(at) if at is not None else datetime.now(UTC)
        tokens = prompt_tokens + completion_tokens
        hosted = self.prices.hosted_cost(prompt_tokens, completion_tokens)
        with self._lock:
            busy_s, seen_tokens = self._clock.add(ended - timedelta(seconds=latency_s), ended, tokens)
            # tokens x (usd per hour / 3600 / measured throughput), throughput = tokens / busy time seen so far
            self_hosted = tokens * self.instance.usd_per_hour / 3600 * (busy_s / seen_tokens) if seen_tokens else 0.0
            row = {
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
                "replica": self.replica,
                "self_hosted_usd": self_hosted,
                "hosted_usd": hosted,
            }
            with self._engine.begin() as conn:  # committed when the block exits
                row["id"] = conn.execute(requests_table.insert().values(**row)).inserted_primary_key[0]
        labels = {"model": row["model"], "adapter": row["adapter"] or ""}
        TOKENS.labels(kind="prompt", **labels).inc(prompt_tokens)
        TOKENS.labels(kind="completion", **labels).inc(completion_tokens)
        REQUESTS.labels(status=status, **labels).inc()
        SELF_HOSTED_USD.labels(**labels).inc(self_hosted)
        for key, usd in hosted.items():
            HOSTED_USD.labels(hosted_model=key, **labels).inc(usd)
        return _out(row)

    def rows(self, since: datetime | None = None) -> list[dict]:
        """All rows (oldest first), or those that ended at or after ``since``. Times are timezone-aware UTC."""
        query = sa.select(requests_table).order_by(requests_table.c.ts, requests_table.c.id)
        if since is not None:
            query = query.where(requests_table.c.ts >= _utc(since).replace(tzinfo=None))
        with self._engine.connect() as conn:
            return [_out(dict(r._mapping)) for r in conn.execute(query)]

    def close(self) -> None:
        """Release the database connections. Every recorded row is already committed."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
    return out
