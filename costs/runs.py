"""What training costs, read from MLflow: a training run (an adapter's registered version, or a run named on the
command line) and each fine-tuning API job, priced both ways: its runtime on the hardware it ran on against its
trained tokens at every hosted training price (``docs/cost.md``)."""

from __future__ import annotations

import os
from datetime import datetime

from ftops.costs.tables import MTOK, HardwareTable, PriceTable
from ftops.settings import mlflow_client

# --------------------------------------------------------------------------------------------- training runs
# What a training run logs (metrics or params), by the names ftops' trainer and HF/TRL trainers use.
# transformers logs num_input_tokens_seen (every epoch's tokens, as hosted training bills) and train_runtime (s);
# TRL logs num_tokens. Without a runtime metric, a finished run's wall time (end - start) is used and said so.
TRAIN_TOKEN_KEYS = (
    "train_tokens",
    "trained_tokens",
    "num_input_tokens_seen",
    "num_tokens",
    "train/num_tokens",
)
TRAIN_RUNTIME_KEYS = ("train_runtime_s", "train_runtime", "train/train_runtime")


def training_cost(run_id: str, prices: PriceTable, usd_per_hour: float) -> dict:
    """A training run's cost both ways: ``trained tokens x training price`` for every price table entry that has one,
    against ``runtime hours x usd_per_hour``. Reads the run's metrics and params; says what is missing if absent."""
    from mlflow.exceptions import MlflowException  # mlflow is heavy: imported when a run is read

    try:
        run = mlflow_client().get_run(run_id)
    except (MlflowException, OSError) as e:  # an unknown id, an unreachable store
        return {
            "run_id": run_id,
            "available": False,
            "reason": f"cannot read the run: {str(e).splitlines()[0]}",
        }
    values = {**run.data.params, **run.data.metrics}
    token_key = next((k for k in TRAIN_TOKEN_KEYS if k in values), None)
    runtime_key = next((k for k in TRAIN_RUNTIME_KEYS if k in values), None)
    tokens = float(values[token_key]) if token_key else None
    runtime = float(values[runtime_key]) if runtime_key else None
    if runtime is None and run.info.status == "FINISHED" and run.info.end_time and tokens is not None:
        runtime, runtime_key = (run.info.end_time - run.info.start_time) / 1000, "run wall time (end - start)"
    out: dict = {
        "run_id": run_id,
        "trained_tokens": tokens,
        "runtime_s": runtime,
        "tokens_from": token_key,
        "runtime_from": runtime_key,
    }
    missing = [what for what, v in (("trained tokens", tokens), ("runtime", runtime)) if v is None]
    out["available"] = not missing
    if missing:
        out["reason"] = (
            f"run {run_id} logged no {' and no '.join(missing)} (looked for "
            f"{', '.join(TRAIN_TOKEN_KEYS if tokens is None else TRAIN_RUNTIME_KEYS)})"
        )
    out["self_hosted_usd"] = runtime / 3600 * usd_per_hour if runtime is not None else None
    out["hosted_usd"] = (
        {
            k: tokens * p.training_usd_per_mtok / MTOK
            for k, p in prices.models.items()
            if p.training_usd_per_mtok is not None
        }
        if tokens is not None
        else {}
    )
    return out


def training_cost_for_version(name: str, version: str, prices: PriceTable, usd_per_hour: float) -> dict:
    """:func:`training_cost` of the run behind registered model ``name`` version ``version``."""
    from mlflow.exceptions import MlflowException  # mlflow is heavy: imported when a run is read

    try:
        run_id = mlflow_client().get_model_version(name, str(version)).run_id
    except (MlflowException, OSError) as e:
        return {
            "registered_model": name,
            "version": str(version),
            "available": False,
            "reason": f"no registered model version {name}/{version} ({str(e).splitlines()[0]})",
        }
    if not run_id:
        return {
            "registered_model": name,
            "version": str(version),
            "available": False,
            "reason": f"registered model version {name}/{version} records no training run",
        }
    return {"registered_model": name, "version": str(version), **training_cost(run_id, prices, usd_per_hour)}


# --------------------------------------------------------------------------------------------- fine-tuning jobs
#: what the fine-tuning API's executors record on a job's run (jobs/runner.py): the wall time of each step on
#: the job's machine, every attempt counted, and the hardware profile (a hardware.yaml instance) it ran on
JOB_WALL_KEYS = ("job_train_wall_s", "job_gate_wall_s")
JOB_HARDWARE_TAG = "ftops.job.hardware"
JOB_TAG = "ftops.job_id"


def job_runs(since: datetime | None = None) -> list:
    """The MLflow runs of fine-tuning API jobs (tagged ``ftops.job_id``), oldest first; ``since``: started at/after."""
    client = mlflow_client()
    experiment = client.get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME", "ftops"))
    if experiment is None:
        return []
    where = f"tags.`{JOB_TAG}` LIKE 'ftjob-%'"
    if since is not None:
        where += f" AND attributes.start_time >= {int(since.timestamp() * 1000)}"
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment.experiment_id],
            where,
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


def job_cost(run, prices: PriceTable, hardware: HardwareTable, profile_if_none: str) -> dict:
    """One fine-tuning job's training cost from its run: ``wall hours x the hourly price of the hardware profile it
    ran on`` (``profile_if_none``, the report's, when the run names none, and said so), against ``trained tokens x
    training price`` of every hosted model that has one. Says what is missing when the run lacks tokens or wall
    time."""
    tags, metrics = run.data.tags, run.data.metrics
    token_key = next((k for k in TRAIN_TOKEN_KEYS if k in metrics), None)
    tokens = float(metrics[token_key]) if token_key else None
    walls = {k: metrics.get(k) for k in JOB_WALL_KEYS}
    wall = sum(v for v in walls.values() if v is not None) if walls["job_train_wall_s"] is not None else None
    profile = tags.get(JOB_HARDWARE_TAG)
    out: dict = {
        "job_id": tags[JOB_TAG],
        "run_id": run.info.run_id,
        "registered_model": tags.get("ftops.model_name"),
        "run_status": run.info.status,
        "trained_tokens": tokens,
        "tokens_from": token_key,
        "train_wall_s": walls["job_train_wall_s"],
        "gate_wall_s": walls["job_gate_wall_s"],
        "wall_s": wall,
        "hardware": profile or profile_if_none,
        "hardware_from": f"run tag {JOB_HARDWARE_TAG}" if profile else "the report's hardware (the run names none)",
    }
    if (profile or profile_if_none) not in hardware.instances:
        return {**out, "available": False, "reason": f"hardware profile {profile!r} is not in the hardware table"}
    usd_per_hour = hardware.instances[profile or profile_if_none].usd_per_hour
    missing = [what for what, v in (("trained tokens", tokens), ("wall time (job_train_wall_s)", wall)) if v is None]
    self_hosted = wall / 3600 * usd_per_hour if wall is not None else None
    out.update(
        available=not missing,
        usd_per_hour=usd_per_hour,
        self_hosted_usd=self_hosted,
        self_hosted_usd_per_mtok=self_hosted / tokens * MTOK if self_hosted is not None and tokens else None,
        hosted_usd={
            k: tokens * p.training_usd_per_mtok / MTOK
            for k, p in prices.models.items()
            if p.training_usd_per_mtok is not None
        }
        if tokens is not None
        else {},
    )
    if missing:
        out["reason"] = f"run {run.info.run_id} logged no {' and no '.join(missing)}"
    return out


def job_costs(
    prices: PriceTable, hardware: HardwareTable, profile_if_none: str, since: datetime | None = None
) -> list[dict]:
    """:func:`job_cost` of every fine-tuning API job's run (all, or those started at/after ``since``)."""
    from mlflow.exceptions import MlflowException  # mlflow is heavy: imported when a run is read

    try:
        runs = job_runs(since)
    except (MlflowException, OSError) as e:  # an unreachable store: the report still shows the ledger
        return [{"available": False, "reason": f"cannot read the fine-tuning jobs' runs: {str(e).splitlines()[0]}"}]
    return [job_cost(run, prices, hardware, profile_if_none) for run in runs]
