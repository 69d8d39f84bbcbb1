"""The ledger as ftops made it in 2026-12: created whole, or brought up to it from a ledger an earlier ftops made.

Revision ID: 0001
Revises: (the first)

A ledger made before revisions were kept has no version table, and its table is at any step from the 2026-11 one
(without ``http_status``, ``error``, ``hardware`` and ``row_id``; the ``ts`` index only) to this one: the
hand-written upgrades of 2026-12 added each missing column and index on its own. So this revision adds exactly what
the table lacks, with the statements those upgrades ran, and every ledger ends with the same table. It looks before
it adds, so a run that stopped half way (SQLite's DDL is not transactional through pysqlite) is finished by the next.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TABLE = "ftops_requests"
#: the columns added to a table made before them, in this order (all nullable: older rows have NULL)
ADDED = ("http_status", "error", "hardware", "row_id")
#: index name -> its column
INDEXES = {
    "ix_ftops_requests_ts": "ts",
    "ix_ftops_requests_request_id": "request_id",
    "ix_ftops_requests_row_id": "row_id",
}


def columns() -> list[sa.Column]:
    """The table's columns as of this revision (new objects on each call: a Column belongs to one table)."""
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.DateTime, nullable=False),
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
        sa.Column("hosted_usd", sa.JSON, nullable=False),
        sa.Column("http_status", sa.Integer, nullable=True),
        sa.Column("error", sa.String(500), nullable=True),
        sa.Column("hardware", sa.String(100), nullable=True),
        sa.Column("row_id", sa.String(32), nullable=True),
    ]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table(TABLE):
        op.create_table(TABLE, *columns())
        have, indexes = set(ADDED), set()
    else:
        have = {c["name"] for c in inspector.get_columns(TABLE)}
        indexes = {i["name"] for i in inspector.get_indexes(TABLE)}
    for column in columns():
        if column.name in ADDED and column.name not in have:
            op.add_column(TABLE, column)
    for name, column in INDEXES.items():
        if name not in indexes:
            op.create_index(name, TABLE, [column])


def downgrade() -> None:
    raise NotImplementedError("the ledger is not downgraded: an older ftops reads and writes this table as it is")
