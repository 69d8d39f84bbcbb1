"""The ledger's Prometheus counters, in the default registry (created once per process; the service's ``/metrics``
exposes them): the tokens, requests and costs of every recorded row, and the rows spooled, replayed and lost."""

from __future__ import annotations

from prometheus_client import Counter

TOKENS = Counter(
    "ftops_tokens",
    "Tokens served, by model, adapter and kind (prompt|completion)",
    ["model", "adapter", "kind"],
)
REQUESTS = Counter(
    "ftops_requests",
    "Requests recorded in the ledger, by model, adapter and status",
    ["model", "adapter", "status"],
)
SELF_HOSTED_USD = Counter(
    "ftops_self_hosted_cost_usd", "Self-hosted cost stamped on ledger rows (USD)", ["model", "adapter"]
)
HOSTED_USD = Counter(
    "ftops_hosted_equivalent_cost_usd",
    "What the same tokens would have cost on a hosted API (USD), per price table entry",
    ["model", "adapter", "hosted_model"],
)
SPOOLED_ROWS = Counter(
    "ftops_ledger_spooled_rows",
    "Ledger rows written to the local spool because the ledger database could not be written",
)
FAILED_ROWS = Counter(
    "ftops_ledger_failed_rows",
    "Ledger rows lost: neither the ledger database nor the local spool could take them",
)
REPLAYED_ROWS = Counter(
    "ftops_ledger_replayed_rows",
    "Spooled ledger rows written to the database once it answered again (rows already there are skipped)",
)


def count(row: dict) -> None:
    """Count one recorded row (written or spooled) in the token, request and cost counters."""
    labels = {"model": row["model"], "adapter": row["adapter"] or ""}
    TOKENS.labels(kind="prompt", **labels).inc(row["prompt_tokens"])
    TOKENS.labels(kind="completion", **labels).inc(row["completion_tokens"])
    REQUESTS.labels(status=row["status"], **labels).inc()
    SELF_HOSTED_USD.labels(**labels).inc(row["self_hosted_usd"])
    for key, usd in row["hosted_usd"].items():
        HOSTED_USD.labels(hosted_model=key, **labels).inc(usd)
