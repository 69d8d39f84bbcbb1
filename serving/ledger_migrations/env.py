"""Alembic's environment for the ledger's revisions (``versions/``), without an ``alembic.ini``:
:func:`ftops.serving.ledger_schema.upgrade` runs it on the connection it hands over (``config.attributes``), inside
that connection's transaction and under the upgrade lock it holds."""

from alembic import context

from ftops.serving.ledger_schema import VERSION_TABLE

context.configure(connection=context.config.attributes["connection"], version_table=VERSION_TABLE)
with context.begin_transaction():  # the caller's transaction: committed when the caller's block ends
    context.run_migrations()
