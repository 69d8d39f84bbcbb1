"""The ledger on a real PostgreSQL server (a throwaway cluster started here with Debian's postgresql binaries).

Skipped, saying why, where PostgreSQL or its driver (``psycopg2-binary``) is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ftops.serving.costs import usage_report
from ftops.serving.ledger import Ledger

PG_BIN = next(
    (p for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True) if (p / "initdb").exists()),
    None,
)


def _as_postgres(argv: list[str]) -> list[str]:
    """Run as the ``postgres`` user when we are root (the server refuses to run as root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


@pytest.fixture(scope="module")
def pg_url():
    pytest.importorskip("psycopg2", reason="PostgreSQL driver not installed (pip install psycopg2-binary)")
    if PG_BIN is None:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    if os.geteuid() == 0 and not shutil.which("runuser"):
        pytest.skip("running as root without runuser: cannot start PostgreSQL")
    import socket
    import tempfile

    # not under pytest's tmp folder: as root that one is private (0700) and the postgres user could not enter it
    root = Path(tempfile.mkdtemp(prefix="ftops-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for argv in (
        [str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        [
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "pg.log"),
            "-w",
            "-o",
            f"-p {port} -k {root} -h 127.0.0.1",
            "start",
        ],
    ):
        proc = subprocess.run(_as_postgres(argv), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            pytest.fail(f"{argv[0]} failed: {proc.stderr or proc.stdout}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
            capture_output=True,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_ledger_concurrent_durable_and_reported_like_sqlite(pg_url, ftops_home):
    t0 = datetime(2026, 11, 1, tzinfo=UTC)

    def rows_for(c: int) -> list[dict]:
        return [
            {
                "request_id": f"req-{c}-{i}",
                "api_key_id": "k",
                "model": "smollm2",
                "adapter": ("a", "b", None)[c % 3],
                "registry_version": (c % 3) or None,
                "prompt_tokens": 10 + c,
                "completion_tokens": i,
                "latency_s": 0.5 + i / 10,
                "ttft_s": 0.1,
                "status": ("ok", "cancelled", "failed")[i % 3],
                "at": t0 + timedelta(seconds=c * 7 + i),
            }
            for i in range(10)
        ]

    ledger = Ledger(pg_url)
    threads = [threading.Thread(target=lambda c=c: [ledger.record(**r) for r in rows_for(c)]) for c in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger.close()
    with (
        Ledger(pg_url) as again,
        Ledger() as sqlite,
    ):  # reopened; the same rows into the default SQLite ledger
        rows = again.rows()
        assert len(rows) == 160 and len({r["request_id"] for r in rows}) == 160
        assert rows[0]["ts"] == t0 and rows[0]["ts"].tzinfo is not None
        for c in range(16):
            for r in rows_for(c):
                sqlite.record(**r)
        on_pg, on_sqlite = usage_report(again), usage_report(sqlite)
    for key in ("requests", "prompt_tokens", "completion_tokens", "busy_s", "self_hosted_usd", "by_status"):
        assert on_pg["total"][key] == pytest.approx(on_sqlite["total"][key]), key
    assert on_pg["adapters"] == on_sqlite["adapters"]
