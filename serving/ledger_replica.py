"""Which server process wrote a ledger row: the ``replica`` column, one id per server process."""

from __future__ import annotations

import os
import socket

from ftops.costs.usage import UNRECORDED_REPLICA
from ftops.env import FTOPS_REPLICA
from ftops.errors import FtopsError
from ftops.serving.ledger_schema import REPLICA_CHARS

REPLICA_ENV = FTOPS_REPLICA.name
POD_NAME_ENV = "POD_NAME"  # Kubernetes' downward API (k8s/base/serving.yaml sets it)


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
