"""Training cost per fine-tuning job: what the executor records on the job's MLflow run (training stage) and what
``ftops cost report`` makes of it (serving stage), checked against tokens x price and wall time x hourly price.

Real: one job through the local executor on the tiny base (``ftops train`` and ``ftops gate`` as child processes),
MLflow on a temporary SQLite store, the shipped price tables, the ``ftops cost report`` command.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from ftops.cli import main
from ftops.jobs.runner import LocalExecutor, RunnerSettings
from ftops.jobs.store import JobStore
from ftops.serving.ledger import Ledger
from tests.test_jobs_api import POLICY, TRAIN  # the same tiny job config and pass-all policy

REPO = Path(__file__).resolve().parents[1]
PRICES = yaml.safe_load((REPO / "costs" / "prices.yaml").read_text())
HARDWARE = yaml.safe_load((REPO / "costs" / "hardware.yaml").read_text())
PROFILE = "aws-g6.xlarge"  # not the table's default: the report must take the job's own profile


def _report(capsys, *argv: str) -> dict:
    assert main(["cost", "report", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def _upload(store: JobStore, n: int, seed: int) -> dict:
    from ftops.expectations.demo_data import generate_tickets

    data = "".join(json.dumps(r) + "\n" for r in generate_tickets(n, seed=seed)).encode()
    return store.add_file("alice", "tickets.jsonl", "fine-tune", data)


def _request(file_id: str) -> dict:
    return {
        "model": "tiny-llama",
        "training_file": file_id,
        "validation_file": None,
        "hyperparameters": {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"},
        "suffix": "cost",
        "seed": 42,
        "metadata": None,
    }


def test_a_jobs_training_cost_in_the_report_is_its_tokens_and_wall_time_priced(tiny_base, ftops_home, tmp_path, capsys):
    from ftops import settings

    (tmp_path / "train.yaml").write_text(TRAIN)
    (tmp_path / "policy.yaml").write_text(POLICY)
    store = JobStore()
    runner = RunnerSettings(
        train_config=tmp_path / "train.yaml",
        policy=tmp_path / "policy.yaml",
        learning_rate=1e-3,
        poll_s=0.5,
        gate_options=["--engine", "transformers", "--max-new-tokens", "4", "--no-regression"],
        hardware=PROFILE,
    )
    executor = LocalExecutor(store, runner)
    job = store.add_job("alice", _request(_upload(store, 200, seed=3)["id"]))
    began = time.monotonic()
    executor.run(store.get_job(job["id"], None))  # validating_files -> queued
    executor.run(store.get_job(job["id"], None))  # queued -> train -> gate
    spent = time.monotonic() - began
    row = store.get_job(job["id"], None)
    assert row["status"] in ("succeeded", "failed") and row["run_id"], row["error"]
    store.close()

    # what the training stage recorded on the run, read back through MLflow itself
    run = settings.mlflow_client().get_run(row["run_id"])
    tokens = run.data.metrics["num_input_tokens_seen"]
    train_wall, gate_wall = run.data.metrics["job_train_wall_s"], run.data.metrics["job_gate_wall_s"]
    assert run.data.tags["ftops.job.hardware"] == PROFILE and tokens > 0
    assert 0 < train_wall and 0 < gate_wall and train_wall + gate_wall <= spent, "each step's wall time, in seconds"

    Ledger().close()  # nothing served: the report still prices the jobs
    report = _report(capsys)
    (entry,) = [j for j in report["fine_tuning_jobs"] if j["job_id"] == job["id"]]
    hourly = HARDWARE["instances"][PROFILE]["usd_per_hour"]
    assert entry["available"] and entry["run_id"] == row["run_id"] and entry["hardware"] == PROFILE
    assert entry["trained_tokens"] == tokens and entry["wall_s"] == pytest.approx(train_wall + gate_wall)
    assert entry["self_hosted_usd"] == pytest.approx((train_wall + gate_wall) / 3600 * hourly)
    assert entry["self_hosted_usd_per_mtok"] == pytest.approx(entry["self_hosted_usd"] / tokens * 1e6)
    trained = {k: m["training_usd_per_mtok"] for k, m in PRICES["models"].items() if m.get("training_usd_per_mtok")}
    assert trained and set(entry["hosted_usd"]) == set(trained)
    for key, per_mtok in trained.items():
        assert entry["hosted_usd"][key] == pytest.approx(tokens * per_mtok / 1e6)
    # another replica for the report does not change the price of hardware the job names
    assert _report(capsys, "--replica", "aws-g5.xlarge")["fine_tuning_jobs"][0]["usd_per_hour"] == hourly
    # the text report shows the job, its tokens and the dollar figure
    assert main(["cost", "report"]) == 0
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if job["id"] in x]
    assert "FINE-TUNING JOBS" in out and PROFILE in line and "tokens, train" in line
    assert _report(capsys, "--since", "2099-01-01")["fine_tuning_jobs"] == [], "--since applies to the jobs too"


def test_every_attempt_counts_and_a_run_without_a_profile_is_priced_at_the_reports_replica(ftops_home, capsys):
    import mlflow

    from ftops import settings

    store = JobStore()
    executor = LocalExecutor(store, RunnerSettings(Path("t.yaml"), Path("p.yaml"), 2e-4))  # no hardware profile
    job = store.add_job("alice", _request("file-x"), status="running")
    with mlflow.start_run(experiment_id=settings.experiment_id(), tags={"ftops.job_id": job["id"]}) as run:
        mlflow.log_metric("num_input_tokens_seen", 3_000_000)
    store.update_job(job["id"], run_id=run.info.run_id)
    executor._record_wall(job, "job_train_wall_s", 1800.0)  # a first attempt, stopped (node lost)
    executor._record_wall(job, "job_train_wall_s", 3600.0)  # the resumed attempt
    lost = store.add_job("alice", _request("file-y"), status="running")
    with mlflow.start_run(experiment_id=settings.experiment_id(), tags={"ftops.job_id": lost["id"]}):
        mlflow.log_metric("num_input_tokens_seen", 10)
    store.close()
    Ledger().close()
    priced, unknown = _report(capsys, "--replica", "aws-g5.xlarge")["fine_tuning_jobs"]
    assert priced["train_wall_s"] == 5400.0 and priced["gate_wall_s"] is None
    assert priced["hardware"] == "aws-g5.xlarge" and "names none" in priced["hardware_from"]
    assert "ftops.job.hardware" not in settings.mlflow_client().get_run(run.info.run_id).data.tags
    assert priced["self_hosted_usd"] == pytest.approx(1.5 * HARDWARE["instances"]["aws-g5.xlarge"]["usd_per_hour"])
    assert not unknown["available"] and "no wall time" in unknown["reason"]
    assert main(["cost", "report"]) == 0
    assert f"{lost['id']} (-, run " in capsys.readouterr().out
