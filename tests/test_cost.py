"""The cost ledger and report: concurrency, durability, the formula recomputed by hand, bad tables, the CLI.

Everything real: SQLite ledgers in a temporary FTOPS_HOME, MLflow on a temporary SQLite store, the default
Prometheus registry. The load test against the live service is tests/test_cost_load.py.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from ftops.cli import main
from ftops.costs import tables as costs
from ftops.costs.tables import load_hardware, load_prices
from ftops.costs.usage import BusyClock, busy_seconds, usage_report
from ftops.errors import FtopsError
from ftops.serving.ledger import Ledger, replica_id

REPO = Path(__file__).resolve().parents[1]
PRICES = yaml.safe_load((REPO / "costs" / "prices.yaml").read_text())
HARDWARE = yaml.safe_load((REPO / "costs" / "hardware.yaml").read_text())
T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _no_replica_env(monkeypatch):
    """The replica's id and hardware come from the environment: these tests set them themselves."""
    for name in ("FTOPS_REPLICA", "POD_NAME", "FTOPS_HARDWARE_PROFILE"):
        monkeypatch.delenv(name, raising=False)


def _record(ledger: Ledger, i: int | str, **kw) -> dict:
    args = {
        "request_id": f"req-{i}",
        "api_key_id": "key-1",
        "model": "smollm2",
        "adapter": "support",
        "registry_version": 1,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "latency_s": 1.0,
        "ttft_s": 0.1,
        "status": "ok",
    }
    return ledger.record(**{**args, **kw})


# --------------------------------------------------------------------------------------------- the ledger
def test_ledger_keeps_every_row_under_concurrent_threads(ftops_home):
    ledger = Ledger()
    sent: list[tuple[str, int, int]] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        rng = random.Random(c)
        for i in range(25):
            p, q = rng.randint(1, 500), rng.randint(0, 200)
            _record(
                ledger,
                f"{c}-{i}",
                prompt_tokens=p,
                completion_tokens=q,
                status=rng.choice(["ok", "cancelled", "failed"]),
                adapter=rng.choice(["a", "b", None]),
            )
            with lock:
                sent.append((f"req-{c}-{i}", p, q))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = ledger.rows()
    ledger.close()
    assert len(rows) == len(sent) == 400
    assert sorted((r["request_id"], r["prompt_tokens"], r["completion_tokens"]) for r in rows) == sorted(sent)
    assert len({r["id"] for r in rows}) == 400


def test_ledger_rows_survive_reopen_and_a_killed_process(ftops_home):
    with Ledger() as ledger:
        first = _record(ledger, "before", prompt_tokens=7, completion_tokens=3, status="cancelled")
    db = ftops_home / "ledger.db"
    assert db.exists()
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # a process that records and is then killed without closing anything: its committed rows are there
    code = textwrap.dedent("""
        import os, signal, sys
        sys.path.insert(0, sys.argv[1])
        from ftops.serving.ledger import Ledger
        ledger = Ledger()
        for i in range(5):
            ledger.record(request_id=f"killed-{i}", api_key_id=None, model="smollm2", adapter=None,
                          registry_version=None, prompt_tokens=i, completion_tokens=1, latency_s=0.5, ttft_s=None,
                          status="ok")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, check=False)
    assert proc.returncode == -9, proc.stderr
    with Ledger() as again:
        rows = again.rows()
    assert [r["request_id"] for r in rows] == ["req-before"] + [f"killed-{i}" for i in range(5)]
    assert rows[0] == first
    assert rows[0]["status"] == "cancelled" and rows[0]["ts"].tzinfo is not None


def test_rows_since_filters_by_end_time(ftops_home):
    with Ledger() as ledger:
        for i in range(5):
            _record(ledger, i, at=T0 + timedelta(minutes=i))
        assert [r["request_id"] for r in ledger.rows(T0 + timedelta(minutes=3))] == ["req-3", "req-4"]
        naive = (T0 + timedelta(minutes=4)).replace(tzinfo=None)  # naive means UTC
        assert [r["request_id"] for r in ledger.rows(naive)] == ["req-4"]


@pytest.mark.parametrize(
    "bad", [{"status": "timeout"}, {"prompt_tokens": -1}, {"completion_tokens": 2.5}, {"latency_s": -0.1}]
)
def test_record_refuses_bad_values_and_writes_nothing(ftops_home, bad):
    with Ledger() as ledger:
        with pytest.raises(FtopsError, match="ledger.record"):
            _record(ledger, "bad", **bad)
        assert ledger.rows() == []


def test_record_stamps_costs_and_increments_prometheus_counters(ftops_home):
    from prometheus_client import REGISTRY

    def sample(name: str, **labels) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    labels = {"model": "smollm2-stamp", "adapter": "stamp"}
    before = (
        sample("ftops_tokens_total", kind="prompt", **labels),
        sample("ftops_tokens_total", kind="completion", **labels),
        sample("ftops_hosted_equivalent_cost_usd_total", hosted_model="openai/gpt-4o", **labels),
    )
    with Ledger() as ledger:
        row = _record(
            ledger,
            "s1",
            model="smollm2-stamp",
            adapter="stamp",
            prompt_tokens=1000,
            completion_tokens=300,
            latency_s=2.0,
            at=T0,
        )
    gpt4o = PRICES["models"]["openai/gpt-4o"]
    expected = (1000 * gpt4o["input_usd_per_mtok"] + 300 * gpt4o["output_usd_per_mtok"]) / 1e6
    assert row["hosted_usd"]["openai/gpt-4o"] == pytest.approx(expected)
    assert set(row["hosted_usd"]) == set(PRICES["models"])
    # the first request of a process: throughput = its own tokens / its own latency, so cost = latency x hourly price
    instance = HARDWARE["instances"][HARDWARE["default"]]
    assert row["hardware"] == HARDWARE["default"]
    assert row["replica"] == replica_id() == f"{socket.gethostname()}:{os.getpid()}"  # this process, on this host
    assert row["self_hosted_usd"] == pytest.approx(2.0 * instance["usd_per_hour"] / 3600)
    assert sample("ftops_tokens_total", kind="prompt", **labels) - before[0] == 1000
    assert sample("ftops_tokens_total", kind="completion", **labels) - before[1] == 300
    assert sample("ftops_hosted_equivalent_cost_usd_total", hosted_model="openai/gpt-4o", **labels) - before[
        2
    ] == pytest.approx(expected)
    assert sample("ftops_requests_total", status="ok", **labels) >= 1


def test_busy_clock_matches_the_union_of_intervals():
    rng = random.Random(7)
    intervals = []
    for _ in range(300):
        start = rng.uniform(0, 500)
        intervals.append((start, start + rng.expovariate(1 / 3)))
    clock = BusyClock(horizon_s=1e9)
    for s, e in intervals:  # arbitrary order, overlapping and disjoint
        busy, _ = clock.add(datetime.fromtimestamp(s, UTC), datetime.fromtimestamp(e, UTC), 1)
    assert busy == pytest.approx(busy_seconds(intervals))
    assert busy_seconds([(0, 4), (2, 6), (10, 11), (10.5, 10.7)]) == pytest.approx(7.0)


# --------------------------------------------------------------------------------------------- the report
def test_report_figures_follow_from_rows_and_tables(ftops_home):
    """Recompute every figure of the report from the rows by the formula of docs/cost.md, by hand."""
    with Ledger() as ledger:
        # intervals [6,10] and [8,12] overlap, [25,30] stands alone: busy time 6 + 5 = 11 s
        _record(
            ledger,
            1,
            adapter="support",
            registry_version=1,
            prompt_tokens=100,
            completion_tokens=50,
            latency_s=4.0,
            at=T0 + timedelta(seconds=10),
        )
        _record(
            ledger,
            2,
            adapter="sql",
            registry_version=3,
            prompt_tokens=300,
            completion_tokens=20,
            latency_s=4.0,
            status="cancelled",
            at=T0 + timedelta(seconds=12),
        )
        _record(
            ledger,
            3,
            adapter="support",
            registry_version=2,
            prompt_tokens=60,
            completion_tokens=0,
            latency_s=5.0,
            status="failed",
            at=T0 + timedelta(seconds=30),
        )
        report = usage_report(ledger)
    hourly = HARDWARE["instances"][HARDWARE["default"]]["usd_per_hour"]
    busy, tokens = 11.0, 100 + 50 + 300 + 20 + 60
    throughput = tokens / busy
    per_token = hourly / 3600 / throughput
    total = report["total"]
    assert (total["requests"], total["prompt_tokens"], total["completion_tokens"]) == (3, 460, 70)
    assert total["by_status"] == {"ok": 1, "cancelled": 1, "failed": 1, "refused": 0}
    assert total["busy_s"] == pytest.approx(busy)
    assert total["window_s"] == pytest.approx(30 - 6)
    assert total["throughput_tokens_per_s"] == pytest.approx(throughput)
    assert total["self_hosted_usd"] == pytest.approx(hourly * busy / 3600)
    assert total["self_hosted_usd_per_mtok"] == pytest.approx(per_token * 1e6)
    assert total["replica_capacity_monthly_tokens"] == pytest.approx(throughput * 3600 * 730)
    for key, p in PRICES["models"].items():
        hosted = (460 * p["input_usd_per_mtok"] + 70 * p["output_usd_per_mtok"]) / 1e6
        assert total["hosted_usd"][key] == pytest.approx(hosted)
        assert total["hosted_usd_per_mtok"][key] == pytest.approx(hosted / tokens * 1e6)
        assert total["savings_usd"][key] == pytest.approx(hosted - hourly * busy / 3600)
        break_even = hourly * 730 / (hosted / tokens)
        assert total["break_even"][key]["monthly_tokens"] == pytest.approx(break_even)
        assert total["break_even"][key]["within_replica_capacity"] == (break_even <= throughput * 3600 * 730)
    by_adapter = {a["adapter"]: a for a in report["adapters"]}
    assert set(by_adapter) == {"support", "sql"}
    support = by_adapter["support"]
    assert (support["requests"], support["prompt_tokens"], support["completion_tokens"]) == (2, 160, 50)
    assert support["registry_versions"] == ["1", "2"]
    assert support["self_hosted_usd"] == pytest.approx(210 * per_token)
    assert by_adapter["sql"]["self_hosted_usd"] == pytest.approx(320 * per_token)
    assert sum(a["self_hosted_usd"] for a in report["adapters"]) == pytest.approx(total["self_hosted_usd"])
    mini = PRICES["models"]["openai/ft:gpt-4o-mini"]
    assert support["hosted_usd"]["openai/ft:gpt-4o-mini"] == pytest.approx(
        (160 * mini["input_usd_per_mtok"] + 50 * mini["output_usd_per_mtok"]) / 1e6
    )
    assert report["hardware"]["monthly_usd"] == pytest.approx(hourly * 730)
    # one replica: its own figures are the total's
    (replica,) = report["replicas"]
    assert (replica["replica"], replica["hardware"], replica["priced_from"]) == (
        replica_id(),
        HARDWARE["default"],
        "its rows",
    )
    assert (replica["requests"], replica["tokens"], replica["busy_s"]) == (3, tokens, pytest.approx(busy))
    assert replica["self_hosted_usd"] == pytest.approx(total["self_hosted_usd"])
    assert total["replicas"] == 1 and total["usd_per_hour"] == pytest.approx(hourly)


def test_report_on_another_hardware_profile_and_since(ftops_home):
    with Ledger() as ledger:
        _record(ledger, "old", latency_s=2.0, at=T0)
        _record(ledger, "new", latency_s=3.0, prompt_tokens=40, completion_tokens=20, at=T0 + timedelta(hours=1))
        report = usage_report(ledger, T0 + timedelta(minutes=30), hardware_profile="aws-g6.xlarge")
    hourly = HARDWARE["instances"]["aws-g6.xlarge"]["usd_per_hour"]
    assert report["hardware"]["name"] == "aws-g6.xlarge" and report["hardware"]["override"]
    (replica,) = report["replicas"]
    assert replica["hardware"] == HARDWARE["default"] and replica["priced_as"] == "aws-g6.xlarge"
    assert replica["window_s"] == pytest.approx(1800)
    assert report["total"]["requests"] == 1
    assert report["total"]["self_hosted_usd"] == pytest.approx(hourly * 3.0 / 3600)
    assert report["total"]["window_s"] == pytest.approx(1800)  # from --since to the last request's end


def test_empty_ledger_report_is_all_zeros(ftops_home):
    with Ledger() as ledger:
        total = usage_report(ledger)["total"]
    assert total["requests"] == 0 and total["self_hosted_usd"] == 0.0
    assert total["self_hosted_usd_per_mtok"] is None and total["throughput_tokens_per_s"] is None
    assert all(v == 0 for v in total["hosted_usd"].values())


def test_training_cost_from_the_registered_run(ftops_home):
    import mlflow

    from ftops import settings

    exp = settings.experiment_id()
    client = mlflow.MlflowClient()
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_metrics({"train_tokens": 2_000_000, "train_runtime": 5400.0})
    client.create_registered_model("support")
    client.create_model_version("support", f"runs:/{run.info.run_id}/adapter", run_id=run.info.run_id)
    with mlflow.start_run(experiment_id=exp) as hf:  # what transformers logs, without a runtime metric
        mlflow.log_metric("num_input_tokens_seen", 500_000)
    with mlflow.start_run(experiment_id=exp) as bare:
        mlflow.log_param("lr", 1e-4)
    for r in (hf, bare):
        client.create_model_version("support", f"runs:/{r.info.run_id}/adapter", run_id=r.info.run_id)
    with Ledger() as ledger:
        for i, version in enumerate((1, 2, 3, 9)):
            _record(ledger, i, adapter="support", registry_version=version, at=T0)
        report = usage_report(ledger, training=True)
    v1, v2, v3, v9 = report["adapters"][0]["training"]
    run_info = client.get_run(hf.info.run_id).info
    assert v2["available"] and v2["trained_tokens"] == 500_000 and v2["tokens_from"] == "num_input_tokens_seen"
    assert v2["runtime_s"] == pytest.approx((run_info.end_time - run_info.start_time) / 1000)
    assert v2["runtime_from"].startswith("run wall time")
    hourly = HARDWARE["instances"][HARDWARE["default"]]["usd_per_hour"]
    assert v1["available"] and v1["run_id"] == run.info.run_id
    assert v1["self_hosted_usd"] == pytest.approx(1.5 * hourly)
    assert v1["hosted_usd"]["openai/ft:gpt-4o-mini"] == pytest.approx(
        2 * PRICES["models"]["openai/ft:gpt-4o-mini"]["training_usd_per_mtok"]
    )
    assert "openai/gpt-4o" not in v1["hosted_usd"]  # no training price for a base model
    assert not v3["available"] and "logged no trained tokens and no runtime" in v3["reason"]
    assert not v9["available"] and "support/9" in v9["reason"]


# --------------------------------------------------------------------------------------------- bad tables
def _write_prices(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load((REPO / "costs" / "prices.yaml").read_text())
    mutate(data)
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "mutate, field",
    [
        (
            lambda d: d["models"]["openai/gpt-4o"].pop("output_usd_per_mtok"),
            "models.openai/gpt-4o.output_usd_per_mtok",
        ),
        (
            lambda d: d["models"]["openai/gpt-4o-mini"].update(input_usd_per_mtok=-0.15),
            "models.openai/gpt-4o-mini.input_usd_per_mtok",
        ),
        (lambda d: d["models"]["openai/ft:gpt-4o"].update(training_usd_per_mtok=-1), "training_usd_per_mtok"),
        (lambda d: d["models"]["openai/gpt-4o"].update(input_usd_per_mtok="cheap"), "input_usd_per_mtok"),
        (lambda d: d.pop("as_of"), "missing required key 'as_of'"),
        (lambda d: d.update(models={}), "models: "),
    ],
)
def test_bad_price_table_is_refused_naming_file_and_field(tmp_path, mutate, field):
    path = _write_prices(tmp_path, mutate)
    with pytest.raises(FtopsError) as e:
        load_prices(path)
    assert str(path) in str(e.value) and field in str(e.value)
    assert "\n" not in str(e.value)


def test_unreadable_tables_and_bad_hardware(tmp_path, monkeypatch, ftops_home):
    with pytest.raises(FtopsError, match="missing.yaml: no such hosted price table file"):
        load_prices(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("models: [unclosed\n")
    with pytest.raises(FtopsError, match=r"broken.yaml: line \d+ is not valid YAML"):
        load_prices(tmp_path / "broken.yaml")
    data = dict(HARDWARE, default="no-such-box")
    (tmp_path / "hw.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(FtopsError, match="default 'no-such-box' is not one of the instances"):
        load_hardware(tmp_path / "hw.yaml")
    data = yaml.safe_load((REPO / "costs" / "hardware.yaml").read_text())
    data["instances"]["aws-g5.xlarge"]["usd_per_hour"] = -1
    (tmp_path / "hw2.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(FtopsError, match="instances.aws-g5.xlarge.usd_per_hour"):
        load_hardware(tmp_path / "hw2.yaml")
    monkeypatch.setenv("FTOPS_HARDWARE_PROFILE", "nope")
    with pytest.raises(
        FtopsError, match="FTOPS_HARDWARE_PROFILE='nope': unknown hardware profile; hardware.yaml lists"
    ):
        load_hardware()
    monkeypatch.setenv("FTOPS_HARDWARE_PROFILE", "aws-g6.xlarge")
    assert load_hardware().default == "aws-g6.xlarge"
    # FTOPS_REPLICA once chose the hardware; now it names the replica, and the old use is refused, saying what to set
    monkeypatch.delenv("FTOPS_HARDWARE_PROFILE")
    monkeypatch.setenv("FTOPS_REPLICA", "aws-g5.xlarge")
    with pytest.raises(FtopsError, match="set FTOPS_HARDWARE_PROFILE=aws-g5.xlarge and unset FTOPS_REPLICA"):
        load_hardware()
    with pytest.raises(FtopsError, match="names a hardware profile"):
        Ledger(hardware=costs.HardwareTable.model_validate(HARDWARE))  # a table given, not loaded: checked too
    assert not (ftops_home / "ledger.db").exists()  # refused before anything was written
    monkeypatch.setenv("FTOPS_HARDWARE_PROFILE", "aws-g5.xlarge")  # both set: a replica may be named like that
    assert load_hardware().default == "aws-g5.xlarge" and replica_id() == "aws-g5.xlarge"


def test_shipped_tables_are_valid_and_dated():
    prices, hardware = load_prices(), load_hardware()
    assert {
        "openai/gpt-4o",
        "openai/gpt-4o-mini",
        "openai/gpt-4.1",
        "openai/gpt-4.1-mini",
        "openai/gpt-4.1-nano",
        "openai/ft:gpt-4o-mini",
        "openai/ft:gpt-4.1-nano",
    } <= set(prices.models)
    assert all(p.training_usd_per_mtok is not None for p in prices.models.values() if p.fine_tuned)
    assert any(p.provider == "together" for p in prices.models.values())
    assert all(p.source.startswith("https://") for p in prices.models.values())
    assert all(i.source.startswith("https://") for i in hardware.instances.values())
    for path in (costs.PRICES_PATH, costs.HARDWARE_PATH):
        assert path.read_text().startswith("# ")


# --------------------------------------------------------------------------------------------- the CLI
def _seed(n: int = 6) -> None:
    with Ledger() as ledger:
        for i in range(n):
            _record(
                ledger,
                i,
                adapter=["support", None][i % 2],
                prompt_tokens=20 + i,
                completion_tokens=10,
                latency_s=1.5,
                at=datetime.now(UTC) - timedelta(minutes=10 - i),
            )


def test_cost_report_json_shape(ftops_home, capsys):
    _seed()
    assert main(["cost", "report", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    total = report["total"]
    assert {"requests", "prompt_tokens", "completion_tokens", "self_hosted_usd", "hosted_usd"} <= set(total)
    assert total["requests"] == 6 and total["prompt_tokens"] == sum(20 + i for i in range(6))
    assert set(total["hosted_usd"]) == set(PRICES["models"])
    assert [(a["adapter"], a["requests"]) for a in report["adapters"]] == [(None, 3), ("support", 3)]
    assert [(e["replica"], e["hardware"], e["requests"]) for e in report["replicas"]] == [
        (replica_id(), HARDWARE["default"], 6)
    ]
    assert main(["cost", "report", "--json", "--since", "7.5m"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["requests"] == 3


def test_cost_report_text_and_plot_logged_to_mlflow(ftops_home, tmp_path, capsys):
    import mlflow

    from ftops import settings

    _seed()
    png = tmp_path / "out" / "cost.png"
    assert main(["cost", "report", "--plot", str(png), "--hardware-profile", "aws-g5.xlarge"]) == 0
    out = capsys.readouterr().out
    assert "TOTAL" in out and "ADAPTER support" in out and "break-even" in out
    assert "hardware aws-g5.xlarge: $1.006/h" in out and "every replica's busy time" in out
    (line,) = [x for x in out.splitlines() if x.startswith(f"  {replica_id()} ")]  # the REPLICAS table
    assert HARDWARE["default"] in line and "(priced as aws-g5.xlarge: the report's hardware profile" in line
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    settings.configure_mlflow()
    runs = mlflow.search_runs(experiment_ids=[settings.experiment_id()], output_format="list")
    assert [r.info.run_name for r in runs] == ["cost-report"]
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id)}
    assert names == {"cost.png", "cost_report.json"}
    assert runs[0].data.metrics["requests"] == 6


def test_cost_report_on_missing_or_empty_ledger_says_what_to_do(ftops_home, capsys):
    assert main(["cost", "report"]) == 1
    err = capsys.readouterr().err
    assert f"no ledger at {ftops_home / 'ledger.db'}" in err and "ftops serve" in err
    assert not (ftops_home / "ledger.db").exists()  # a reader does not create one
    Ledger().close()
    assert main(["cost", "report"]) == 0
    assert "no requests" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["--since", "yesterday"], 2, "--since 'yesterday'"),
        (["--hardware-profile", "nope"], 1, "unknown hardware profile 'nope': hardware.yaml lists"),
        (["--replica", "nope"], 1, "unknown hardware profile 'nope'"),  # its old name
        (["--prices", "/nonexistent/prices.yaml"], 1, "/nonexistent/prices.yaml: no such hosted price table file"),
    ],
)
def test_cost_report_bad_input_is_one_line(ftops_home, capsys, argv, code, message):
    assert main(["cost", "report", *argv]) == code
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cost_report_bad_price_table_exits_1(ftops_home, tmp_path):
    path = _write_prices(tmp_path, lambda d: d["models"]["openai/gpt-4o"].update(output_usd_per_mtok=-10))
    proc = subprocess.run(
        [sys.executable, "-m", "ftops.cli", "cost", "report", "--prices", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        (
            f"ftops cost: error: {path}: models.openai/gpt-4o.output_usd_per_mtok: Input should be greater "
            f"than or equal to 0 (got -10); fix the hosted price table and restart"
        )
    ]
