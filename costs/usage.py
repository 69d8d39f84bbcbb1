"""The cost model over the ledger's rows: busy time, each replica's own cost, and the usage report.

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
from datetime import UTC, datetime
from typing import NamedTuple

from ftops.costs.runs import training_cost_for_version
from ftops.costs.tables import HOURS_PER_MONTH, MTOK, HardwareTable, Instance, PriceTable

#: ``replica`` of the rows written before ledgers recorded replicas (which server wrote them is not known)
UNRECORDED_REPLICA = "(unrecorded)"


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

    def charge(self, start: datetime, end: datetime, tokens: int, usd_per_hour: float) -> float:
        """Add one request and return its self-hosted cost at ``usd_per_hour``: ``tokens x usd_per_hour / 3600 / R``,
        ``R`` the throughput measured so far (tokens / busy time, this request included); 0 before any tokens."""
        busy_s, seen_tokens = self.add(start, end, tokens)
        return tokens * usd_per_hour / 3600 * (busy_s / seen_tokens) if seen_tokens else 0.0


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


class _Fleet(NamedTuple):
    """What the window's replicas add up to (from their :func:`replica_cost` entries)."""

    rates: dict[ReplicaKey, float]
    """Each priced replica's USD per token (a replica with no busy time or no tokens is absent)."""
    busy_s: float
    self_hosted_usd: float
    tokens: int
    usd_per_hour: float
    """One replica's hourly price, weighted by the priced replicas' busy time (the report's hardware if none)."""
    throughput: float | None
    """Tokens per second of one busy replica: all tokens over the summed busy time."""


def _fleet(replicas: list[dict], instance: Instance) -> _Fleet:
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
    return _Fleet(rates, busy, self_hosted, tokens, usd_per_hour, throughput)


def _replicas(
    rows: list[dict], hardware: HardwareTable, fallback: str, override: bool, since: datetime | None
) -> list[dict]:
    """:func:`replica_cost` of each replica (and hardware profile) of ``rows``, sorted."""
    by_replica: dict[ReplicaKey, list[dict]] = {}
    for r in rows:
        by_replica.setdefault((r["replica"], r["hardware"]), []).append(r)
    return [
        replica_cost(name, profile, group, hardware, fallback, override=override, since=since)
        for (name, profile), group in sorted(by_replica.items())
    ]


def _total(rows: list[dict], replicas: list[dict], fleet: _Fleet, prices: PriceTable, since: datetime | None) -> dict:
    """The report's ``total``: :func:`summarize` of every row, charged the replicas' own figures summed, with the
    window, the utilization and the monthly volumes."""
    total = summarize(rows, prices, fleet.rates, fleet.usd_per_hour, fleet.throughput)
    self_hosted, tokens = fleet.self_hosted_usd, fleet.tokens
    total["self_hosted_usd"] = self_hosted  # the replicas' own figures, summed
    total["self_hosted_usd_per_mtok"] = self_hosted / tokens * MTOK if fleet.rates and tokens else None
    total["savings_usd"] = {k: v - self_hosted for k, v in total["hosted_usd"].items()}
    starts = [r["ts"].timestamp() - r["latency_s"] for r in rows]
    window = (rows[-1]["ts"].timestamp() - (since.timestamp() if since else min(starts))) if rows else 0.0
    replica_windows = sum(e["window_s"] for e in replicas)
    total.update(
        replicas=len(replicas),
        usd_per_hour=fleet.usd_per_hour,
        busy_s=fleet.busy_s,
        window_s=window,
        throughput_tokens_per_s=fleet.throughput,
        utilization=fleet.busy_s / replica_windows if replica_windows > 0 else None,
        projected_monthly_tokens=tokens / window * 3600 * HOURS_PER_MONTH if window > 0 else None,
        replica_capacity_monthly_tokens=fleet.throughput * 3600 * HOURS_PER_MONTH if fleet.throughput else None,
    )
    return total


def _adapters(rows: list[dict], fleet: _Fleet, prices: PriceTable, training_usd_per_hour: float | None) -> list[dict]:
    """One entry per (model, adapter): its registry versions and :func:`summarize` of its rows; with
    ``training_usd_per_hour`` (the report's hardware), each version's training run cost too."""
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
            **summarize(group, prices, fleet.rates, fleet.usd_per_hour, fleet.throughput),
        }
        if training_usd_per_hour is not None:
            entry["training"] = (
                [
                    training_cost_for_version(adapter, v, prices, training_usd_per_hour)
                    for v in entry["registry_versions"]
                ]
                if adapter
                else []
            )
        adapters.append(entry)
    return adapters


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
    training run cost read from MLflow (see :func:`~ftops.costs.runs.training_cost`)."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    prices = prices or ledger.prices
    hardware = hardware or ledger.hardware
    fallback = hardware_profile or (ledger.hardware_profile if hardware is ledger.hardware else hardware.default)
    instance = hardware.instance(fallback)
    rows = ledger.rows(since)
    replicas = _replicas(rows, hardware, fallback, hardware_profile is not None, since)
    fleet = _fleet(replicas, instance)
    total = _total(rows, replicas, fleet, prices, since)
    adapters = _adapters(rows, fleet, prices, instance.usd_per_hour if training else None)
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
