"""The cost model: price tables, busy time, and the usage report recomputed from the ledger.

The formula is stated in ``docs/cost.md``; in short, for the rows of a window, replica by replica (the ledger's
``replica`` column: one server process each, see :func:`ftops.serving.ledger.replica_id`):

- a replica's engine busy time ``B_r`` = length of the union of its requests' intervals ``[ended - latency_s, ended]``
  (never one union over several replicas: each has its own engine and its own bill);
- its measured throughput ``R_r = T_r / B_r`` with ``T_r`` = prompt + completion tokens of its rows;
- its self-hosted cost = ``H_r x B_r / 3600``, ``H_r`` the hourly price of its hardware profile (the ``hardware``
  column); a request or an adapter gets ``tokens x H_r / 3600 / R_r`` of the replica that served it;
- the total is the sum over replicas; ``R = T / sum(B_r)`` is the throughput of one busy replica;
- hosted-equivalent cost for model ``m`` = ``prompt x input_m + completion x output_m`` (per-million prices / 1e6);
- break-even monthly volume for ``m`` = ``H x 730 / (hosted_usd_m / T)``, ``H`` the busy-time-weighted hourly price.
"""

from __future__ import annotations

import bisect
import os
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ftops.config import read_yaml, validate
from ftops.env import FTOPS_HARDWARE, FTOPS_HARDWARE_PROFILE, FTOPS_PRICES, FTOPS_REPLICA
from ftops.errors import FtopsError
from ftops.settings import mlflow_client

HERE = Path(__file__).resolve().parent
PRICES_PATH = HERE / "prices.yaml"
HARDWARE_PATH = HERE / "hardware.yaml"
HOURS_PER_MONTH = 730
MTOK = 1_000_000


# --------------------------------------------------------------------------------------------- price tables
class ModelPrice(BaseModel):
    """One hosted model's per-token prices."""

    model_config = ConfigDict(extra="forbid")

    provider: str = Field(min_length=1)
    """Who sells it: ``openai``, ``together``."""
    model: str = Field(min_length=1)
    """The provider's model name, e.g. ``gpt-4o-mini`` or ``ft:gpt-4o-mini``."""
    fine_tuned: bool
    """True for the price of serving a model fine-tuned on the provider."""
    input_usd_per_mtok: float = Field(ge=0)
    """USD per million prompt (input) tokens."""
    output_usd_per_mtok: float = Field(ge=0)
    """USD per million completion (output) tokens."""
    training_usd_per_mtok: float | None = Field(default=None, ge=0)
    """USD per million trained tokens (tokens x epochs) for fine-tuning this model; null if not offered."""
    as_of: date
    """The day this price was read from ``source``."""
    source: str = Field(min_length=1)
    """Where the price was read (URL)."""
    new_jobs_until: date | None = None
    """Fine-tuned rows: the last day the provider accepts new fine-tuning jobs; null when no end is announced."""
    available_until: date | None = None
    """The last day the model answers requests (a fine-tuned model ends with its base); null when not announced."""
    availability_source: str | None = None
    """Where the availability dates were read (URL) and on which day; required with either date."""

    @model_validator(mode="after")
    def _dates_have_a_source(self) -> ModelPrice:
        if (self.new_jobs_until or self.available_until) and not self.availability_source:
            raise ValueError("availability dates need availability_source (where and when they were read)")
        return self


class PriceTable(BaseModel):
    """``costs/prices.yaml``: hosted per-token prices, keyed ``provider/model``."""

    model_config = ConfigDict(extra="forbid")

    as_of: date
    """When the table as a whole was last checked."""
    currency: Literal["USD"]
    """Every price is in US dollars."""
    models: dict[str, ModelPrice] = Field(min_length=1)
    """Keyed ``provider/model`` (the key is what reports and metrics show)."""

    def hosted_cost(self, prompt_tokens: int, completion_tokens: int) -> dict[str, float]:
        """``{key: prompt x input + completion x output}`` in USD for every model of the table."""
        return {
            key: (prompt_tokens * p.input_usd_per_mtok + completion_tokens * p.output_usd_per_mtok) / MTOK
            for key, p in self.models.items()
        }


class Instance(BaseModel):
    """One replica type and its on-demand hourly price."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field(min_length=1)
    """What it is: vCPUs, memory, accelerators."""
    usd_per_hour: float = Field(gt=0)
    """On-demand USD per hour for one replica."""
    as_of: date
    """The day this price was read from ``source``."""
    source: str = Field(min_length=1)
    """Where the price was read (URL)."""


class HardwareTable(BaseModel):
    """``costs/hardware.yaml``: hourly prices of replica types."""

    model_config = ConfigDict(extra="forbid")

    as_of: date
    """When the table as a whole was last checked."""
    currency: Literal["USD"]
    """Every price is in US dollars."""
    default: str
    """The instance a replica runs on unless ``$FTOPS_HARDWARE_PROFILE`` (or ``--hardware-profile``) names another."""
    instances: dict[str, Instance] = Field(min_length=1)
    """Keyed by a short name, e.g. ``aws-g5.xlarge``."""

    @model_validator(mode="after")
    def _default_exists(self) -> HardwareTable:
        if self.default not in self.instances:
            raise ValueError(f"default {self.default!r} is not one of the instances ({', '.join(self.instances)})")
        return self

    def instance(self, name: str) -> Instance:
        if name not in self.instances:
            raise FtopsError(
                f"unknown hardware profile {name!r}: hardware.yaml lists {', '.join(sorted(self.instances))}"
            )
        return self.instances[name]


def _load_yaml_table(path: Path, model: type[BaseModel], what: str) -> Any:
    return validate(model, read_yaml(path, what, mapping=False), str(path), hint=f"fix the {what} and restart")


def load_prices(path: str | Path | None = None) -> PriceTable:
    """Load and validate the hosted price table: ``path``, ``$FTOPS_PRICES`` or ``costs/prices.yaml``.

    Raises :class:`FtopsError` naming the file and the field (missing field, negative price, bad date...)."""
    return _load_yaml_table(Path(path or FTOPS_PRICES.get() or PRICES_PATH), PriceTable, "hosted price table")


HARDWARE_PROFILE_ENV = FTOPS_HARDWARE_PROFILE.name
REPLICA_ENV = FTOPS_REPLICA.name


def load_hardware(path: str | Path | None = None) -> HardwareTable:
    """Load and validate the replica price table: ``path``, ``$FTOPS_HARDWARE`` or ``costs/hardware.yaml``. Its
    ``default`` becomes ``$FTOPS_HARDWARE_PROFILE`` when that is set (the instance this machine runs on)."""
    table = _load_yaml_table(Path(path or FTOPS_HARDWARE.get() or HARDWARE_PATH), HardwareTable, "hardware price table")
    check_replica_env(table)
    if profile := FTOPS_HARDWARE_PROFILE.get():
        if profile not in table.instances:
            raise FtopsError(
                f"{HARDWARE_PROFILE_ENV}={profile!r}: unknown hardware profile; hardware.yaml lists "
                f"{', '.join(sorted(table.instances))}"
            )
        table.default = profile
    return table


def check_replica_env(table: HardwareTable) -> None:
    """Refuse ``$FTOPS_REPLICA`` set to a hardware profile's name while ``$FTOPS_HARDWARE_PROFILE`` is unset: an older
    ftops read the hardware from ``FTOPS_REPLICA``, which now names the replica, so such a setting would price the
    replica at the table's default without a word."""
    value = FTOPS_REPLICA.get()
    if value and value in table.instances and not FTOPS_HARDWARE_PROFILE.is_set():
        raise FtopsError(
            f"{REPLICA_ENV}={value!r} names a hardware profile, but {REPLICA_ENV} now names the replica (this "
            f"server: its host or pod) and {HARDWARE_PROFILE_ENV} the hardware: set {HARDWARE_PROFILE_ENV}={value} "
            f"and unset {REPLICA_ENV} (or set it to this server's name)"
        )


# --------------------------------------------------------------------------------------------- busy time
def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals (seconds): the time the engine had work."""
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        total += cur_end - cur_start
    return total


class BusyClock:
    """Running union of request intervals and token count: the throughput a live server has measured so far.

    Segments ending more than ``horizon_s`` before the newest end are folded into a scalar (a request that would
    overlap them is older than the horizon), so memory stays bounded on a long-running server."""

    def __init__(self, horizon_s: float = 3600.0) -> None:
        self.horizon_s = horizon_s
        self._starts: list[float] = []
        self._ends: list[float] = []
        self._folded_s = 0.0
        self._open_s = 0.0
        self.tokens = 0

    def add(self, start: datetime, end: datetime, tokens: int) -> tuple[float, int]:
        """Add one request; return ``(busy seconds, tokens)`` so far."""
        s, e = start.timestamp(), end.timestamp()
        i = bisect.bisect_left(self._ends, s)  # first segment that ends at or after s
        j = bisect.bisect_right(self._starts, e)  # segments [i, j) overlap [s, e]
        if i < j:
            s, e = min(s, self._starts[i]), max(e, self._ends[j - 1])
            self._open_s -= sum(b - a for a, b in zip(self._starts[i:j], self._ends[i:j], strict=True))
        self._starts[i:j], self._ends[i:j] = [s], [e]
        self._open_s += e - s
        self.tokens += tokens
        newest = self._ends[-1]
        while len(self._ends) > 1 and self._ends[0] < newest - self.horizon_s:
            self._folded_s += self._ends[0] - self._starts[0]
            self._open_s -= self._ends[0] - self._starts[0]
            del self._starts[0], self._ends[0]
        return self._folded_s + self._open_s, self.tokens


# --------------------------------------------------------------------------------------------- the report
ReplicaKey = tuple[str, str]  # (replica, hardware profile of its rows)


def summarize(
    rows: list[dict],
    prices: PriceTable,
    rates: dict[ReplicaKey, float],
    usd_per_hour: float,
    throughput: float | None,
) -> dict:
    """Tokens and costs of ``rows``: each row's tokens at the USD per token of the replica that served it (``rates``,
    the window's measured rate of each replica; a replica missing from it had no busy time or no tokens: 0).
    ``usd_per_hour`` and ``throughput`` are one replica's, for the break-even volumes."""
    prompt = sum(r["prompt_tokens"] for r in rows)
    completion = sum(r["completion_tokens"] for r in rows)
    tokens = prompt + completion
    priced = any((r["replica"], r["hardware"]) in rates for r in rows)
    self_hosted = sum(
        (r["prompt_tokens"] + r["completion_tokens"]) * rates.get((r["replica"], r["hardware"]), 0.0) for r in rows
    )
    hosted = prices.hosted_cost(prompt, completion)
    by_status = {s: sum(1 for r in rows if r["status"] == s) for s in ("ok", "cancelled", "failed", "refused")}
    capacity = throughput * 3600 * HOURS_PER_MONTH if throughput else None
    replica_month = usd_per_hour * HOURS_PER_MONTH
    break_even = {}
    for key, usd in hosted.items():
        hosted_per_token = usd / tokens if tokens else None
        volume = replica_month / hosted_per_token if hosted_per_token else None
        break_even[key] = {
            "monthly_tokens": volume,
            "within_replica_capacity": None if volume is None or capacity is None else volume <= capacity,
        }
    return {
        "requests": len(rows),
        "by_status": by_status,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "tokens": tokens,
        "self_hosted_usd": self_hosted,
        "self_hosted_usd_per_mtok": self_hosted / tokens * MTOK if priced and tokens else None,
        "hosted_usd": hosted,
        "hosted_usd_per_mtok": {k: (v / tokens * MTOK if tokens else None) for k, v in hosted.items()},
        "savings_usd": {k: v - self_hosted for k, v in hosted.items()},
        "break_even": break_even,
    }


def replica_cost(
    replica: str,
    profile: str,
    rows: list[dict],
    hardware: HardwareTable,
    fallback: str,
    override: bool = False,
    since: datetime | None = None,
) -> dict:
    """One replica's own figures from its own rows: its busy time (the union of its requests' intervals), its tokens,
    and its self-hosted cost ``usd_per_hour x busy / 3600`` at the hardware profile its rows name (``profile``).
    ``override``: priced at ``fallback`` instead; a profile the table does not list is priced at ``fallback`` too, and
    said so (``priced_from``). What the report charges a replica is exactly this, whatever the other replicas did."""
    if override:
        priced_as, priced_from = fallback, "the report's hardware profile (override)"
    elif profile in hardware.instances:
        priced_as, priced_from = profile, "its rows"
    else:
        priced_as, priced_from = fallback, f"the report's hardware profile: the table does not list {profile!r}"
    usd_per_hour = hardware.instances[priced_as].usd_per_hour
    starts = [r["ts"].timestamp() - r["latency_s"] for r in rows]
    ends = [r["ts"].timestamp() for r in rows]
    busy = busy_seconds(list(zip(starts, ends, strict=True)))
    prompt = sum(r["prompt_tokens"] for r in rows)
    tokens = prompt + sum(r["completion_tokens"] for r in rows)
    throughput = tokens / busy if busy > 0 and tokens else None
    self_hosted = usd_per_hour * busy / 3600 if throughput else 0.0
    window = max(ends) - (since.timestamp() if since else min(starts)) if rows else 0.0
    return {
        "replica": replica,
        "hardware": profile,
        "priced_as": priced_as,
        "priced_from": priced_from,
        "usd_per_hour": usd_per_hour,
        "requests": len(rows),
        "prompt_tokens": prompt,
        "completion_tokens": tokens - prompt,
        "tokens": tokens,
        "first_start": datetime.fromtimestamp(min(starts), UTC).isoformat() if rows else None,
        "last_end": datetime.fromtimestamp(max(ends), UTC).isoformat() if rows else None,
        "busy_s": busy,
        "window_s": window,
        "utilization": busy / window if window > 0 else None,
        "throughput_tokens_per_s": throughput,
        "self_hosted_usd": self_hosted,
        "self_hosted_usd_per_mtok": self_hosted / tokens * MTOK if throughput else None,
    }


def usage_report(
    ledger,
    since: datetime | None = None,
    *,
    prices: PriceTable | None = None,
    hardware: HardwareTable | None = None,
    hardware_profile: str | None = None,
    training: bool = False,
) -> dict:
    """The cost report over the ledger's rows (all, or those that ended at/after ``since``): per replica, per adapter
    and in total.

    Every figure follows from the rows and the two tables by the formula of ``docs/cost.md``; the stamped per-row
    costs are not read. Each replica is charged its own busy time at the hourly price of the hardware profile its rows
    name (:func:`replica_cost`); the total is their sum. ``hardware_profile``: price every replica at this
    ``hardware.yaml`` instance instead (what the same traffic would cost on other hardware). The report's hardware
    (``hardware_profile``, else the ledger's) prices what names no hardware: training runs, and replicas whose profile
    the table no longer lists. ``prices``/``hardware`` default to the ledger's. ``training=True`` adds each adapter's
    training run cost read from MLflow (see :func:`training_cost`)."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    prices = prices or ledger.prices
    hardware = hardware or ledger.hardware
    fallback = hardware_profile or (ledger.hardware_profile if hardware is ledger.hardware else hardware.default)
    instance = hardware.instance(fallback)
    rows = ledger.rows(since)
    by_replica: dict[ReplicaKey, list[dict]] = {}
    for r in rows:
        by_replica.setdefault((r["replica"], r["hardware"]), []).append(r)
    replicas = [
        replica_cost(name, profile, group, hardware, fallback, override=hardware_profile is not None, since=since)
        for (name, profile), group in sorted(by_replica.items())
    ]
    rates = {
        (e["replica"], e["hardware"]): e["self_hosted_usd"] / e["tokens"]
        for e in replicas
        if e["throughput_tokens_per_s"]
    }
    busy = sum(e["busy_s"] for e in replicas)
    self_hosted = sum(e["self_hosted_usd"] for e in replicas)
    priced_busy = sum(e["busy_s"] for e in replicas if e["throughput_tokens_per_s"])
    usd_per_hour = self_hosted * 3600 / priced_busy if priced_busy > 0 else instance.usd_per_hour
    tokens = sum(e["tokens"] for e in replicas)
    throughput = tokens / busy if busy > 0 and tokens else None
    total = summarize(rows, prices, rates, usd_per_hour, throughput)
    total["self_hosted_usd"] = self_hosted  # the replicas' own figures, summed
    total["self_hosted_usd_per_mtok"] = self_hosted / tokens * MTOK if rates and tokens else None
    total["savings_usd"] = {k: v - self_hosted for k, v in total["hosted_usd"].items()}
    starts = [r["ts"].timestamp() - r["latency_s"] for r in rows]
    window = (rows[-1]["ts"].timestamp() - (since.timestamp() if since else min(starts))) if rows else 0.0
    replica_windows = sum(e["window_s"] for e in replicas)
    total.update(
        replicas=len(replicas),
        usd_per_hour=usd_per_hour,
        busy_s=busy,
        window_s=window,
        throughput_tokens_per_s=throughput,
        utilization=busy / replica_windows if replica_windows > 0 else None,
        projected_monthly_tokens=tokens / window * 3600 * HOURS_PER_MONTH if window > 0 else None,
        replica_capacity_monthly_tokens=throughput * 3600 * HOURS_PER_MONTH if throughput else None,
    )
    groups: dict[tuple[str, str | None], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["adapter"]), []).append(r)
    adapters = []
    for (model, adapter), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        entry = {
            "model": model,
            "adapter": adapter,
            "registry_versions": sorted(
                {r["registry_version"] for r in group if r["registry_version"]},
                key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v),
            ),
            **summarize(group, prices, rates, usd_per_hour, throughput),
        }
        if training:
            entry["training"] = (
                [
                    training_cost_for_version(adapter, v, prices, instance.usd_per_hour)
                    for v in entry["registry_versions"]
                ]
                if adapter
                else []
            )
        adapters.append(entry)
    return {
        "since": since.isoformat() if since else None,
        "generated_at": datetime.now(UTC).isoformat(),
        "hardware": {
            "name": fallback,
            "override": hardware_profile is not None,
            "usd_per_hour": instance.usd_per_hour,
            "description": instance.description,
            "monthly_usd": instance.usd_per_hour * HOURS_PER_MONTH,
            "hours_per_month": HOURS_PER_MONTH,
        },
        "prices_as_of": prices.as_of.isoformat(),
        "hardware_as_of": hardware.as_of.isoformat(),
        "total": total,
        "replicas": replicas,
        "adapters": adapters,
    }


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
    from mlflow.exceptions import MlflowException

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
    from mlflow.exceptions import MlflowException

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
    from mlflow.exceptions import MlflowException

    try:
        runs = job_runs(since)
    except (MlflowException, OSError) as e:  # an unreachable store: the report still shows the ledger
        return [{"available": False, "reason": f"cannot read the fine-tuning jobs' runs: {str(e).splitlines()[0]}"}]
    return [job_cost(run, prices, hardware, profile_if_none) for run in runs]
