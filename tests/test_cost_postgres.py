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

from ftops.costs.usage import usage_report
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


# --------------------------------------------------------------------------------------------- replicas (issue 13)
def _database(pg_url: str, name: str) -> str:
    """A new, empty database on the server; its URL."""
    import sqlalchemy as sa

    admin = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg2://"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return pg_url.rsplit("/", 1)[0] + f"/{name}"


def test_two_replicas_on_one_postgres_ledger_are_charged_each_its_own(pg_url, ftops_home, tmp_path, monkeypatch):
    from test_ledger_replica import BUSY, DEFAULT, POD_A, POD_B, TOKENS, alone, hourly, record

    for name in ("FTOPS_REPLICA", "POD_NAME", "FTOPS_HARDWARE_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    url = _database(pg_url, "replicas")
    a, b = Ledger(url, replica="pod-a"), Ledger(url, replica="pod-b", hardware_profile="aws-g6.xlarge")
    writers = [threading.Thread(target=record, args=args) for args in ((a, POD_A), (b, POD_B))]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    report = usage_report(a)
    a.close()
    b.close()
    by_replica = {e["replica"]: e for e in report["replicas"]}
    assert sorted(by_replica) == ["pod-a", "pod-b"]
    assert by_replica["pod-a"] == alone(tmp_path, "pod-a", POD_A)["replicas"][0]
    assert by_replica["pod-b"] == alone(tmp_path, "pod-b", POD_B, hardware_profile="aws-g6.xlarge")["replicas"][0]
    assert [by_replica[n]["busy_s"] for n in ("pod-a", "pod-b")] == [BUSY["pod-a"], BUSY["pod-b"]]
    assert [by_replica[n]["tokens"] for n in ("pod-a", "pod-b")] == [TOKENS["pod-a"], TOKENS["pod-b"]]
    expected = (BUSY["pod-a"] * hourly(DEFAULT) + BUSY["pod-b"] * hourly("aws-g6.xlarge")) / 3600
    assert report["total"]["self_hosted_usd"] == pytest.approx(expected)
    assert report["total"]["self_hosted_usd"] == pytest.approx(sum(e["self_hosted_usd"] for e in report["replicas"]))
    assert sum(x["self_hosted_usd"] for x in report["adapters"]) == pytest.approx(expected)


OLD_PG_TABLE = """
CREATE TABLE ftops_requests (
    id SERIAL NOT NULL, ts TIMESTAMP WITHOUT TIME ZONE NOT NULL, request_id VARCHAR(200) NOT NULL,
    api_key_id VARCHAR(200), model VARCHAR(200) NOT NULL, adapter VARCHAR(200), registry_version VARCHAR(100),
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, latency_s FLOAT NOT NULL, ttft_s FLOAT,
    status VARCHAR(20) NOT NULL, replica VARCHAR(100) NOT NULL, self_hosted_usd FLOAT NOT NULL,
    hosted_usd JSON NOT NULL, http_status INTEGER, error VARCHAR(500), PRIMARY KEY (id)
);
CREATE INDEX ix_ftops_requests_ts ON ftops_requests (ts);
CREATE INDEX ix_ftops_requests_request_id ON ftops_requests (request_id);
INSERT INTO ftops_requests (ts, request_id, model, prompt_tokens, completion_tokens, latency_s, status, replica,
                            self_hosted_usd, hosted_usd, http_status)
VALUES ('2026-11-01 12:00:04', 'old-1', 'smollm2', 100, 0, 4.0, 'ok', 'aws-g6.xlarge', 0.0, '{}', 200),
       ('2026-11-01 12:00:05', 'old-2', 'smollm2', 50, 0, 2.0, 'ok', 'aws-g6.xlarge', 0.0, '{}', 200);
"""


def test_old_schema_postgres_ledger_is_upgraded_once_by_replicas_opening_it_at_once(pg_url, ftops_home):
    """The table as the ftops before replicas made it (its replica column holding the hardware profile), opened by 8
    replicas at the same moment: each opens it, the column is added once, the old rows are moved once."""
    import sqlalchemy as sa

    from ftops.serving.ledger import UNRECORDED_REPLICA

    url = _database(pg_url, "legacy")
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
    with engine.begin() as conn:
        conn.exec_driver_sql(OLD_PG_TABLE)
    barrier, errors = threading.Barrier(8), []

    def open_it(i: int) -> None:
        barrier.wait()
        try:
            Ledger(url, replica=f"pod-{i}").close()
        except Exception as e:  # noqa: BLE001 - collected and shown by the assert below
            errors.append(e)

    threads = [threading.Thread(target=open_it, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []

    def raw() -> list[tuple]:
        with engine.connect() as conn:
            query = "SELECT request_id, replica, hardware, http_status FROM ftops_requests ORDER BY id"
            return [tuple(r) for r in conn.exec_driver_sql(query)]

    columns = [c["name"] for c in sa.inspect(engine).get_columns("ftops_requests")]
    assert columns.count("hardware") == 1
    upgraded = raw()
    assert upgraded == [
        ("old-1", UNRECORDED_REPLICA, "aws-g6.xlarge", 200),
        ("old-2", UNRECORDED_REPLICA, "aws-g6.xlarge", 200),
    ]
    with Ledger(url, replica="pod-new") as ledger:  # opened again: nothing changes; new rows carry both
        assert raw() == upgraded
        ledger.record(
            request_id="new-1",
            api_key_id=None,
            model="smollm2",
            adapter=None,
            registry_version=None,
            prompt_tokens=1,
            completion_tokens=1,
            latency_s=0.1,
            ttft_s=None,
            status="ok",
        )
        (entry,) = [e for e in usage_report(ledger)["replicas"] if e["replica"] == UNRECORDED_REPLICA]
    assert raw()[-1] == ("new-1", "pod-new", ledger.hardware_profile, None)
    assert (entry["hardware"], entry["busy_s"]) == ("aws-g6.xlarge", pytest.approx(5.0))
    engine.dispose()
