"""The ledger's database: its table, the engine that opens it, and the upgrade that brings a ledger made by any ftops
up to date before it is used.

The table's changes are Alembic revisions under ``ledger_migrations/versions/`` (the first one, ``0001``, also takes
every ledger made before the ledger kept revisions: the 2026-11 table or any step between it and 2026-12, by adding
what it lacks). The revision a database is at is kept in its own table, :data:`VERSION_TABLE`, never in
``alembic_version``, which an MLflow store sharing the database keeps for itself. To change the table: change
:data:`requests_table`, and add a revision whose ``down_revision`` is the current head that makes the same change;
a new column must be nullable (an older ftops still inserts during a rolling upgrade), and the revision should look
before it adds (SQLite's DDL is not transactional through pysqlite: a crash mid-upgrade leaves it half done, and the
next opener runs it again).

Openers take the upgrade in turn: on PostgreSQL under an advisory lock (:data:`MIGRATION_LOCK_KEY`) held by the
transaction that upgrades, on SQLite under a file lock beside the database (``<db>.upgrade.lock``), the same locks
the ftops before Alembic took, so replicas of both kinds starting together upgrade once. Each opener looks at the
version inside the lock, so the second finds the first one's work, and writes nothing to a ledger already at the
head: a ledger made before revisions were kept whose table already has every column and index of the first revision
(:data:`BASELINE`) is at it, and stays without a version table until a later revision has something to change. An
opener that may not read the version table (a PostgreSQL role granted the ledger's table only, such as the report's
read-only one) uses a table that has every column as it is. A database at a revision this ftops does not know (a
newer ftops upgraded it) is left as it is.

Rows that an ftops from before the ``hardware`` column still writes during a rolling upgrade are fixed by every
writer that opens the ledger (:func:`move_unrecorded_rows`): that is not a change of the table, so not a revision.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from functools import cache
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from filelock import FileLock

from ftops import settings
from ftops.costs.usage import UNRECORDED_REPLICA
from ftops.env import FTOPS_LEDGER_URL
from ftops.redact import redact

log = logging.getLogger("ftops.serving")

ERROR_CHARS = 500  # the stored reason is cut to this length
REPLICA_CHARS = 100  # the longest replica id the column holds
MIGRATION_LOCK_KEY = 0x66746F7073  # PostgreSQL advisory lock ("ftops") that serializes the upgrade of the table
#: the table holding the revision the database is at (Alembic's version table, named apart from MLflow's)
VERSION_TABLE = "ftops_ledger_version"
#: the revision a ledger made before revisions were kept is at once its table has every column and index of it
BASELINE = "0001"
#: the Alembic script directory: ``env.py`` and the revisions, ``versions/``
MIGRATIONS = Path(__file__).resolve().parent / "ledger_migrations"

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
    # older ftops can still insert during a rolling upgrade; such rows are read as unrecorded (see ledger_rows.read_row)
    sa.Column("hardware", sa.String(100), nullable=True),
    # one random id per row (added 2026-12): what the spool write-back deduplicates on. A client may send one
    # X-Request-Id with several requests (retries, a fixed header), and each is a row of its own
    sa.Column("row_id", sa.String(32), nullable=True, index=True),
)
#: the columns a table made before them lacks (NULL in the rows an older ftops spooled, when they are written back)
ADDED_COLUMNS = ("http_status", "error", "hardware", "row_id")


def default_url() -> str:
    """``$FTOPS_LEDGER_URL``, else ``sqlite:///$FTOPS_HOME/ledger.db``."""
    return settings.database_url(FTOPS_LEDGER_URL, "ledger.db")


def create_engine(url: str) -> sa.Engine:
    """The engine of the ledger at ``url``: PostgreSQL gives up connecting after 10 s; SQLite runs in WAL mode with
    full fsync and waits up to 30 s for a lock. Raises ModuleNotFoundError when the URL's driver is not installed."""
    connect_args = {"connect_timeout": 10} if url.startswith(("postgresql", "postgres:")) else {}
    engine = sa.create_engine(_with_installed_driver(url), pool_pre_ping=True, connect_args=connect_args)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def create_or_upgrade(engine: sa.Engine, move_rows: bool = True) -> None:
    """Create the table, or bring one made by an older ftops up to date, in one transaction that concurrent openers
    take in turn (a PostgreSQL advisory lock; a file lock beside a SQLite file). ``move_rows=False`` (a reader, which
    may hold read-only credentials): leave old rows as they are; :meth:`Ledger.rows` reads them the same way."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:  # released when the transaction ends (PostgreSQL DDL is transactional)
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            _bring_up_to_date(conn, move_rows)
        return
    db = engine.url.database if engine.dialect.name == "sqlite" else None
    folder = Path(db).resolve().parent if db and db != ":memory:" else None
    lock = FileLock(f"{db}.upgrade.lock") if folder is not None and os.access(folder, os.W_OK) else None
    if lock is None:  # another database, or a read-only folder (which this opener could not upgrade anyway)
        with engine.begin() as conn:
            _bring_up_to_date(conn, move_rows)
        return
    with lock, engine.begin() as conn:
        _bring_up_to_date(conn, move_rows)


def _bring_up_to_date(conn: sa.Connection, writer: bool) -> None:
    """Caller holds the upgrade lock. Run the revisions from the database's to the head when it is not there; a
    writer then moves the rows an older ftops wrote. A ledger already at the head is not written. Idempotent."""
    if _needs_upgrade(conn):
        upgrade(conn)
    if writer:
        move_unrecorded_rows(conn)


def _needs_upgrade(conn: sa.Connection) -> bool:
    revisions = current_revisions(conn)
    if revisions is None:
        # the version table is there, but this opener may not read it (a role granted the ledger's table only): it
        # could not upgrade either, so a table with every column is used as it is
        return not has_every_column(conn)
    if not revisions and has_baseline(conn):
        revisions = {BASELINE}  # made before revisions were kept, and already as the first revision makes it
    if unknown := revisions - set(known_revisions()):
        log.warning(
            "ledger %s: the database is at revision %s, which this ftops does not know (a newer one upgraded it); "
            "left as it is",
            redact(str(conn.engine.url)),
            ", ".join(sorted(unknown)),
        )
        return False
    return revisions != {head_revision()}


def upgrade(conn: sa.Connection) -> None:
    """Run the Alembic revisions from the database's to the head, on ``conn`` and inside its transaction."""
    config = _config()
    config.attributes["connection"] = conn  # what ledger_migrations/env.py runs the revisions on
    command.upgrade(config, "head")


def current_revisions(conn: sa.Connection) -> set[str] | None:
    """The revisions the database is at: empty without a version table (a new database, or a ledger made before
    revisions were kept); None when this opener may not read it (PostgreSQL privileges)."""
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return set()
    if conn.dialect.name == "postgresql":
        query = sa.text("SELECT has_table_privilege(:table, 'SELECT')")
        if not conn.execute(query, {"table": VERSION_TABLE}).scalar():
            return None
    return set(conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())


def _config() -> Config:
    """Alembic's configuration: no ``alembic.ini``, only the script directory."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))  # a ConfigParser value
    return config


@cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    """The revision this ftops's table is."""
    return _scripts().get_current_head()


def known_revisions() -> list[str]:
    """Every revision this ftops has, newest first."""
    return [script.revision for script in _scripts().walk_revisions()]


def has_baseline(conn: sa.Connection) -> bool:
    """Whether the table has every column and index the first revision (:data:`BASELINE`) gives it."""
    first = _scripts().get_revision(BASELINE).module
    return _has(conn, {c.name for c in first.columns()}, set(first.INDEXES))


def has_every_column(conn: sa.Connection) -> bool:
    """Whether the table has every column and index of :data:`requests_table` (what this ftops reads and writes)."""
    return _has(conn, set(requests_table.c.keys()), {i.name for i in requests_table.indexes})


def _has(conn: sa.Connection, columns: set[str], indexes: set[str]) -> bool:
    inspector = sa.inspect(conn)
    if not inspector.has_table(requests_table.name):
        return False
    have = {c["name"] for c in inspector.get_columns(requests_table.name)}
    return columns <= have and indexes <= {i["name"] for i in inspector.get_indexes(requests_table.name)}


def move_unrecorded_rows(conn: sa.Connection) -> None:
    """Move the hardware profile that rows an older ftops wrote kept in ``replica`` to ``hardware``; their replica
    becomes :data:`UNRECORDED_REPLICA` (which server wrote them is not known)."""
    t = requests_table.c
    if conn.execute(sa.select(t.id).where(t.hardware.is_(None)).limit(1)).first() is not None:
        # every right-hand side reads the row as it was (hardware is assigned first for MySQL, which does not)
        conn.execute(
            requests_table.update()
            .where(t.hardware.is_(None))
            .ordered_values((t.hardware, t.replica), (t.replica, UNRECORDED_REPLICA))
        )


def first_line(e: Exception) -> str:
    """An error as one redacted line: its class and the first line of its message."""
    return redact(f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")  # a committed row survives a crash of the process or the machine
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _with_installed_driver(url: str) -> str:
    """``postgresql://`` means psycopg 3 to SQLAlchemy 2.1; use psycopg2 when only that one is installed."""
    if (
        url.startswith(("postgresql://", "postgres://"))
        and importlib.util.find_spec("psycopg") is None
        and importlib.util.find_spec("psycopg2") is not None
    ):
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url
