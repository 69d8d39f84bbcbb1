"""Scale-out (issue 13): ledger rows carry the replica that served them apart from its hardware profile, and the cost
report charges each replica its own busy time, so N replicas are never priced as one machine.

Everything real: SQLite ledgers in a temporary FTOPS_HOME written through the Ledger API (two Ledger objects with
different replicas on one file, two processes on one host), a ledger table of the old schema made by hand and
upgraded on open (also by three processes at once), the ``ftops cost report`` command. The same on PostgreSQL:
tests/test_cost_postgres.py.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from ftops.cli import main
from ftops.costs.usage import usage_report
from ftops.errors import FtopsError
from ftops.serving.ledger import UNRECORDED_REPLICA, Ledger, replica_id, spool_path, spool_row

REPO = Path(__file__).resolve().parents[1]
HARDWARE = yaml.safe_load((REPO / "costs" / "hardware.yaml").read_text())
DEFAULT = HARDWARE["default"]
T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)


def hourly(profile: str) -> float:
    return HARDWARE["instances"][profile]["usd_per_hour"]


@pytest.fixture(autouse=True)
def _no_replica_env(monkeypatch):
    """The replica's id and hardware come from the environment: these tests set them themselves."""
    for name in ("FTOPS_REPLICA", "POD_NAME", "FTOPS_HARDWARE_PROFILE"):
        monkeypatch.delenv(name, raising=False)


# Two replicas' requests, (request id, end s after T0, latency s, prompt, completion, adapter). Their intervals
# overlap across replicas: pod-a is busy [0,6] and [20,25] (11 s), pod-b [1,9] (8 s); the union of all is only 14 s,
# which is what pricing them as one machine charged.
POD_A = [("a1", 4, 4.0, 100, 50, "support"), ("a2", 6, 4.0, 300, 20, "sql"), ("a3", 25, 5.0, 60, 0, "support")]
POD_B = [("b1", 5, 4.0, 200, 40, "support"), ("b2", 9, 6.0, 50, 10, None)]
BUSY = {"pod-a": 11.0, "pod-b": 8.0}
TOKENS = {"pod-a": 530, "pod-b": 300}


def record(ledger: Ledger, rows: list[tuple]) -> None:
    for request_id, end, latency, prompt, completion, adapter in rows:
        ledger.record(
            request_id=request_id,
            api_key_id="k",
            model="smollm2",
            adapter=adapter,
            registry_version=1 if adapter else None,
            prompt_tokens=prompt,
            completion_tokens=completion,
            latency_s=latency,
            ttft_s=0.1,
            status="ok",
            at=T0 + timedelta(seconds=end),
        )


def alone(tmp_path: Path, replica: str, rows: list[tuple], **kw) -> dict:
    """What ``replica`` alone is charged: its rows, and only them, in a ledger of their own."""
    url = f"sqlite:///{tmp_path / f'{replica}-alone.db'}"
    with Ledger(url, replica=replica, **kw) as ledger:
        record(ledger, rows)
        return usage_report(ledger)


# --------------------------------------------------------------------------------------------- the replica's id
def test_replica_id_is_the_env_the_pod_or_the_host_and_process(ftops_home, monkeypatch):
    assert replica_id() == f"{socket.gethostname()}:{os.getpid()}"
    monkeypatch.setenv("POD_NAME", "ftops-serve-7d9f-abcde")  # Kubernetes' downward API
    assert replica_id() == "ftops-serve-7d9f-abcde"
    monkeypatch.setenv("FTOPS_REPLICA", "gpu-node-3")
    assert replica_id() == "gpu-node-3"
    with Ledger(replica="explicit") as ledger:
        assert (ledger.replica, ledger.hardware_profile) == ("explicit", DEFAULT)
    with Ledger() as ledger:
        assert ledger.replica == "gpu-node-3"
    monkeypatch.setenv("FTOPS_REPLICA", " ")  # blank: not set
    assert replica_id() == "ftops-serve-7d9f-abcde"
    for bad in ("x" * 101, UNRECORDED_REPLICA):
        monkeypatch.setenv("FTOPS_REPLICA", bad)
        with pytest.raises(FtopsError, match="FTOPS_REPLICA .*a replica id is 1 to 100 characters"):
            Ledger()
    with pytest.raises(FtopsError, match="replica '': a replica id is 1 to 100 characters"):
        replica_id("")


def test_hardware_profile_is_recorded_apart_from_the_replica(ftops_home, monkeypatch):
    monkeypatch.setenv("FTOPS_REPLICA", "pod-x")
    monkeypatch.setenv("FTOPS_HARDWARE_PROFILE", "aws-g6.xlarge")
    with Ledger() as ledger:
        record(ledger, POD_A[:1])
        (row,) = ledger.rows()
    assert (row["replica"], row["hardware"]) == ("pod-x", "aws-g6.xlarge")
    # first request of the process: its own busy time at its own hardware's price
    assert row["self_hosted_usd"] == pytest.approx(4.0 * hourly("aws-g6.xlarge") / 3600)
    raw = sqlite3.connect(ftops_home / "ledger.db").execute("SELECT replica, hardware FROM ftops_requests").fetchall()
    assert raw == [("pod-x", "aws-g6.xlarge")]
    # a request recorded while no Ledger is open carries the same two
    spool_row(None, **_fields("early"))
    with Ledger() as ledger:
        early = [r for r in ledger.rows() if r["request_id"] == "early"]
    assert [(r["replica"], r["hardware"]) for r in early] == [("pod-x", "aws-g6.xlarge")]


def _fields(request_id: str) -> dict:
    return {
        "request_id": request_id,
        "api_key_id": None,
        "model": "smollm2",
        "adapter": None,
        "registry_version": None,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "latency_s": 0.0,
        "ttft_s": None,
        "status": "refused",
        "http_status": 503,
        "error": "not_ready",
    }


def test_two_processes_on_one_host_are_two_replicas(ftops_home):
    code = textwrap.dedent("""
        from datetime import UTC, datetime
        from ftops.serving.ledger import Ledger
        with Ledger() as ledger:
            ledger.record(request_id="child", api_key_id=None, model="smollm2", adapter=None, registry_version=None,
                          prompt_tokens=100, completion_tokens=100, latency_s=10.0, ttft_s=None, status="ok",
                          at=datetime(2026, 11, 1, 12, 0, 10, tzinfo=UTC))
            print(ledger.replica)
    """)
    with Ledger() as ledger:  # this process: open while the other one writes the same file
        record(ledger, [("parent", 10, 10.0, 100, 100, None)])  # the same 10 s as the child's request
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        assert child.returncode == 0, child.stderr
        report = usage_report(ledger)
    host = socket.gethostname()
    by_replica = {e["replica"]: e for e in report["replicas"]}
    assert set(by_replica) == {f"{host}:{os.getpid()}", child.stdout.strip()}
    assert child.stdout.strip().startswith(f"{host}:") and child.stdout.strip() != f"{host}:{os.getpid()}"
    # two engines busy for the same 10 s: 20 replica-seconds charged, not 10
    assert [e["busy_s"] for e in report["replicas"]] == [10.0, 10.0]
    assert report["total"]["self_hosted_usd"] == pytest.approx(20.0 * hourly(DEFAULT) / 3600)


# --------------------------------------------------------------------------------------------- the report
def test_each_replica_is_charged_its_own_busy_time_and_the_total_is_their_sum(ftops_home, tmp_path):
    """Two Ledger objects with different replicas write one SQLite file; the report's per-replica figures are each
    what that replica alone is charged, and they add up to the total."""
    with Ledger(replica="pod-a") as a, Ledger(replica="pod-b") as b:
        record(a, POD_A)
        record(b, POD_B)
        report = usage_report(a)
        rows = a.rows()
    assert {(r["request_id"][0], r["replica"], r["hardware"]) for r in rows} == {
        ("a", "pod-a", DEFAULT),
        ("b", "pod-b", DEFAULT),
    }
    h = hourly(DEFAULT)
    by_replica = {e["replica"]: e for e in report["replicas"]}
    assert sorted(by_replica) == ["pod-a", "pod-b"]
    for name in ("pod-a", "pod-b"):
        e = by_replica[name]
        assert (e["busy_s"], e["tokens"], e["hardware"], e["priced_as"]) == (
            pytest.approx(BUSY[name]),
            TOKENS[name],
            DEFAULT,
            DEFAULT,
        )
        assert e["self_hosted_usd"] == pytest.approx(h * BUSY[name] / 3600)
        assert e["throughput_tokens_per_s"] == pytest.approx(TOKENS[name] / BUSY[name])
    # each replica's figures are exactly what it would be charged alone
    assert by_replica["pod-a"] == alone(tmp_path, "pod-a", POD_A)["replicas"][0]
    assert by_replica["pod-b"] == alone(tmp_path, "pod-b", POD_B)["replicas"][0]
    assert alone(tmp_path, "pod-a-again", POD_A)["total"]["self_hosted_usd"] == pytest.approx(
        by_replica["pod-a"]["self_hosted_usd"]
    )
    # the total is the sum: 19 replica-seconds, not the 14 s of one merged clock
    total = report["total"]
    assert total["self_hosted_usd"] == pytest.approx(sum(e["self_hosted_usd"] for e in report["replicas"]))
    assert total["self_hosted_usd"] == pytest.approx(h * 19.0 / 3600)
    assert total["self_hosted_usd"] > h * 14.0 / 3600 * 1.3
    assert (total["busy_s"], total["replicas"], total["requests"]) == (pytest.approx(19.0), 2, 5)
    assert total["throughput_tokens_per_s"] == pytest.approx(830 / 19.0)
    assert total["utilization"] == pytest.approx(19.0 / ((25 - 0) + (9 - 1)))  # busy over each one's own window
    assert total["usd_per_hour"] == pytest.approx(h)
    # adapters: each row's tokens at the rate of the replica that served it; they add up to the total too
    rate = {name: h * BUSY[name] / 3600 / TOKENS[name] for name in BUSY}
    by_adapter = {a["adapter"]: a for a in report["adapters"]}
    assert by_adapter["support"]["self_hosted_usd"] == pytest.approx(210 * rate["pod-a"] + 240 * rate["pod-b"])
    assert by_adapter["sql"]["self_hosted_usd"] == pytest.approx(320 * rate["pod-a"])
    assert by_adapter[None]["self_hosted_usd"] == pytest.approx(60 * rate["pod-b"])
    assert sum(a["self_hosted_usd"] for a in report["adapters"]) == pytest.approx(total["self_hosted_usd"])


def test_replicas_on_different_hardware_are_each_priced_at_their_own(ftops_home, tmp_path):
    with Ledger(replica="pod-a") as a, Ledger(replica="pod-b", hardware_profile="aws-g6.xlarge") as b:
        record(a, POD_A)
        record(b, POD_B)
        report = usage_report(a)
        what_if = usage_report(a, hardware_profile="aws-g5.xlarge")
    by_replica = {e["replica"]: e for e in report["replicas"]}
    assert (by_replica["pod-b"]["hardware"], by_replica["pod-b"]["usd_per_hour"]) == (
        "aws-g6.xlarge",
        hourly("aws-g6.xlarge"),
    )
    assert by_replica["pod-b"]["self_hosted_usd"] == pytest.approx(8.0 * hourly("aws-g6.xlarge") / 3600)
    assert by_replica["pod-b"] == alone(tmp_path, "pod-b", POD_B, hardware_profile="aws-g6.xlarge")["replicas"][0]
    expected = (11.0 * hourly(DEFAULT) + 8.0 * hourly("aws-g6.xlarge")) / 3600
    assert report["total"]["self_hosted_usd"] == pytest.approx(expected)
    assert report["total"]["usd_per_hour"] == pytest.approx(expected * 3600 / 19.0)  # busy-time weighted
    # the report's hardware prices every replica instead when it is given (the same traffic on other hardware)
    assert {e["priced_as"] for e in what_if["replicas"]} == {"aws-g5.xlarge"}
    assert {e["hardware"] for e in what_if["replicas"]} == {DEFAULT, "aws-g6.xlarge"}  # the rows still say theirs
    assert what_if["total"]["self_hosted_usd"] == pytest.approx(19.0 * hourly("aws-g5.xlarge") / 3600)


def test_a_profile_the_table_no_longer_lists_is_priced_at_the_reports_and_said_so(ftops_home, tmp_path):
    table = dict(HARDWARE, instances={**HARDWARE["instances"], "my-box": {**HARDWARE["instances"][DEFAULT]}})
    table["instances"]["my-box"]["usd_per_hour"] = 9.0
    (tmp_path / "hw.yaml").write_text(yaml.safe_dump(table))
    from ftops.costs.tables import load_hardware

    with Ledger(replica="pod-old", hardware=load_hardware(tmp_path / "hw.yaml"), hardware_profile="my-box") as old:
        record(old, POD_B)
    with Ledger(create=False) as reader:  # the shipped table: no my-box
        (entry,) = usage_report(reader)["replicas"]
    assert (entry["hardware"], entry["priced_as"]) == ("my-box", DEFAULT)
    assert entry["priced_from"] == "the report's hardware profile: the table does not list 'my-box'"
    assert entry["self_hosted_usd"] == pytest.approx(8.0 * hourly(DEFAULT) / 3600)


def test_cost_report_lists_every_replica_as_text_and_json(ftops_home, capsys):
    with Ledger(replica="pod-a") as a, Ledger(replica="pod-b", hardware_profile="aws-g6.xlarge") as b:
        record(a, POD_A)
        record(b, POD_B)
    assert main(["cost", "report", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(e["replica"], e["hardware"], e["requests"]) for e in report["replicas"]] == [
        ("pod-a", DEFAULT, 3),
        ("pod-b", "aws-g6.xlarge", 2),
    ]
    assert report["total"]["self_hosted_usd"] == pytest.approx(sum(e["self_hosted_usd"] for e in report["replicas"]))
    assert report["hardware"] == {
        "name": DEFAULT,
        "override": False,
        "usd_per_hour": hourly(DEFAULT),
        "description": HARDWARE["instances"][DEFAULT]["description"],
        "monthly_usd": pytest.approx(hourly(DEFAULT) * 730),
        "hours_per_month": 730,
    }
    assert main(["cost", "report"]) == 0
    out = capsys.readouterr().out
    assert "REPLICAS (each charged its own engine busy time" in out
    assert f"2 replicas (aws-g6.xlarge, {DEFAULT}): engine busy 19.0 s (summed over replicas)" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  pod-")}
    assert lines["pod-a"][1:5] == [DEFAULT, f"{hourly(DEFAULT):.4g}", "3", "530"]
    assert lines["pod-b"][1:5] == ["aws-g6.xlarge", f"{hourly('aws-g6.xlarge'):.4g}", "2", "300"]
    assert lines["pod-b"][5] == "8.0"


def test_text_report_sums_the_replicas_beyond_the_listed_ones(ftops_home, capsys):
    from ftops.costs import report as cost_cli

    for i in range(cost_cli.REPLICA_LINES + 3):
        with Ledger(replica=f"pod-{i:02d}") as ledger:
            record(ledger, [(f"r{i}", 10 + i, 1.0 + i, 10, 10, None)])  # pod-i: i + 1 s busy
    assert main(["cost", "report"]) == 0
    out = capsys.readouterr().out
    listed = [line for line in out.splitlines() if line.startswith("  pod-")]
    assert len(listed) == cost_cli.REPLICA_LINES and listed[0].startswith(f"  pod-{cost_cli.REPLICA_LINES + 2:02d} ")
    (rest,) = [line for line in out.splitlines() if "3 more replicas (--json lists each)" in line]
    assert rest.split()[-4:-1] == ["3", "60", f"{1.0 + 2.0 + 3.0:.1f}"]  # requests, tokens, busy s of pod-00..02


# --------------------------------------------------------------------------------------------- the old schema
OLD_TABLE = """
CREATE TABLE ftops_requests (
    id INTEGER NOT NULL, ts DATETIME NOT NULL, request_id VARCHAR(200) NOT NULL, api_key_id VARCHAR(200),
    model VARCHAR(200) NOT NULL, adapter VARCHAR(200), registry_version VARCHAR(100), prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL, latency_s FLOAT NOT NULL, ttft_s FLOAT, status VARCHAR(20) NOT NULL,
    replica VARCHAR(100) NOT NULL, self_hosted_usd FLOAT NOT NULL, hosted_usd JSON NOT NULL, PRIMARY KEY (id)
);
CREATE INDEX ix_ftops_requests_ts ON ftops_requests (ts);
"""
OLD_INSERT = (
    "INSERT INTO ftops_requests (ts, request_id, api_key_id, model, adapter, registry_version, prompt_tokens, "
    "completion_tokens, latency_s, ttft_s, status, replica, self_hosted_usd, hosted_usd) "
    "VALUES (?, ?, 'k', 'smollm2', NULL, NULL, ?, 0, ?, NULL, 'ok', ?, 0.0, '{}')"
)


def old_ledger(db: Path) -> None:
    """A ledger as the ftops of 2026-11 made it (before http_status, error and hardware), its replica column holding
    the hardware profile."""
    db.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(db) as conn:
        conn.executescript(OLD_TABLE)
        conn.executemany(
            OLD_INSERT,
            [
                ("2026-11-01 12:00:04.000000", "old-1", 100, 4.0, "aws-g6.xlarge"),
                ("2026-11-01 12:00:05.000000", "old-2", 50, 2.0, "aws-g6.xlarge"),
            ],
        )
    conn.close()


def raw_rows(db: Path) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT request_id, replica, hardware, http_status FROM ftops_requests ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


def test_an_old_schema_ledger_is_upgraded_on_open_once(ftops_home):
    db = ftops_home / "ledger.db"
    old_ledger(db)
    with Ledger(replica="pod-new") as ledger:
        old = ledger.rows()
        record(ledger, [("new-1", 20, 1.0, 10, 10, None)])
    assert [(r["request_id"], r["replica"], r["hardware"]) for r in old] == [
        ("old-1", UNRECORDED_REPLICA, "aws-g6.xlarge"),
        ("old-2", UNRECORDED_REPLICA, "aws-g6.xlarge"),
    ]
    columns = [c[1] for c in sqlite3.connect(db).execute("PRAGMA table_info(ftops_requests)")]
    assert columns.count("hardware") == 1 and {"http_status", "error"} <= set(columns)
    indexes = {i[1] for i in sqlite3.connect(db).execute("PRAGMA index_list(ftops_requests)")}
    assert "ix_ftops_requests_request_id" in indexes
    upgraded = raw_rows(db)
    assert upgraded == [
        ("old-1", UNRECORDED_REPLICA, "aws-g6.xlarge", None),
        ("old-2", UNRECORDED_REPLICA, "aws-g6.xlarge", None),
        ("new-1", "pod-new", DEFAULT, None),
    ]
    Ledger().close()  # idempotent: opening again changes nothing
    assert raw_rows(db) == upgraded
    # an older ftops still writing during a rolling upgrade: no hardware, its profile in replica
    with sqlite3.connect(db) as conn:
        conn.execute(OLD_INSERT, ("2026-11-01 12:00:30.000000", "late-old", 30, 1.0, DEFAULT))
    conn.close()
    with Ledger(create=False) as reader:  # a reader (maybe with read-only credentials) reads it as moved...
        late = [r for r in reader.rows() if r["request_id"] == "late-old"]
        report = usage_report(reader)
    assert [(r["replica"], r["hardware"]) for r in late] == [(UNRECORDED_REPLICA, DEFAULT)]
    assert raw_rows(db)[-1] == ("late-old", DEFAULT, None, None)  # ...and writes nothing
    Ledger().close()  # the next writer moves it
    assert raw_rows(db)[-1] == ("late-old", UNRECORDED_REPLICA, DEFAULT, None)
    # the old rows are priced at the profile they recorded, as one unrecorded machine per profile
    entries = {(e["replica"], e["hardware"]): e for e in report["replicas"]}
    assert set(entries) == {(UNRECORDED_REPLICA, "aws-g6.xlarge"), (UNRECORDED_REPLICA, DEFAULT), ("pod-new", DEFAULT)}
    g6 = entries[(UNRECORDED_REPLICA, "aws-g6.xlarge")]
    assert g6["busy_s"] == pytest.approx(5.0)  # [0, 4] and [3, 5]
    assert g6["self_hosted_usd"] == pytest.approx(5.0 * hourly("aws-g6.xlarge") / 3600)


def test_a_row_an_older_ftops_spooled_is_written_back_as_unrecorded(ftops_home):
    url = f"sqlite:///{ftops_home / 'ledger.db'}"
    Ledger(url).close()
    line = {**_fields("spooled-old"), "ts": T0.isoformat(), "replica": "aws-g6.xlarge", "self_hosted_usd": 0.0}
    line["hosted_usd"] = {}
    del line["http_status"], line["error"]  # the spool of the oldest ftops had neither
    spool_path(url).write_text(json.dumps(line) + "\n")
    with Ledger(url, replica="pod-now") as ledger:
        rows = ledger.rows()
    assert [(r["request_id"], r["replica"], r["hardware"]) for r in rows] == [
        ("spooled-old", UNRECORDED_REPLICA, "aws-g6.xlarge")
    ]
    assert spool_path(url).read_text() == ""


def test_processes_opening_an_old_ledger_at_once_upgrade_it_once(ftops_home):
    db = ftops_home / "ledger.db"
    old_ledger(db)
    start = time.time() + 3  # every process imports first, then they open the ledger together
    code = textwrap.dedent("""
        import sys, time
        from ftops.serving.ledger import Ledger
        time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
        Ledger(replica=sys.argv[2]).close()
    """)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(start), f"p{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for i in range(3)
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert [code for code, _ in results] == [0, 0, 0], results
    columns = [c[1] for c in sqlite3.connect(db).execute("PRAGMA table_info(ftops_requests)")]
    assert [columns.count(c) for c in ("http_status", "error", "hardware")] == [1, 1, 1]
    assert raw_rows(db) == [
        ("old-1", UNRECORDED_REPLICA, "aws-g6.xlarge", None),
        ("old-2", UNRECORDED_REPLICA, "aws-g6.xlarge", None),
    ]
