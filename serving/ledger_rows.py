"""What a ledger row is: the fields :meth:`Ledger.record` takes and checks, the row it writes, and how a stored row
is read back (rows an older ftops wrote included)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Literal

from ftops.costs.usage import UNRECORDED_REPLICA
from ftops.errors import FtopsError
from ftops.redact import redact
from ftops.serving.ledger_schema import ERROR_CHARS

Status = Literal["ok", "cancelled", "failed", "refused"]
STATUSES: tuple[str, ...] = ("ok", "cancelled", "failed", "refused")


def check(*, status, prompt_tokens, completion_tokens, latency_s, ttft_s, http_status, **_) -> None:
    """Refuse a row the ledger must not hold (a bad status, negative or non-integer tokens, negative times)."""
    if status not in STATUSES:
        raise FtopsError(f"ledger.record: status {status!r} is not one of {', '.join(STATUSES)}")
    for name, value in (("prompt_tokens", prompt_tokens), ("completion_tokens", completion_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise FtopsError(f"ledger.record: {name} must be a non-negative integer, got {value!r}")
    if latency_s is None or latency_s < 0 or (ttft_s is not None and ttft_s < 0):
        raise FtopsError(f"ledger.record: latency_s/ttft_s must be >= 0, got {latency_s!r}/{ttft_s!r}")
    if http_status is not None and (isinstance(http_status, bool) or not isinstance(http_status, int)):
        raise FtopsError(f"ledger.record: http_status must be an integer or None, got {http_status!r}")


def build_row(
    *,
    request_id,
    api_key_id,
    model,
    adapter,
    registry_version,
    prompt_tokens,
    completion_tokens,
    latency_s,
    ttft_s,
    status,
    at,
    http_status,
    error,
    replica,
    hardware,
    self_hosted_usd,
    hosted_usd,
) -> dict:
    """The row to insert: naive UTC ``ts`` (``at``, default now), strings where the table holds strings, the error
    redacted and cut to :data:`ERROR_CHARS`, a new random ``row_id``."""
    ended = utc(at) if at is not None else datetime.now(UTC)
    return {
        "ts": ended.replace(tzinfo=None),
        "request_id": str(request_id),
        "api_key_id": None if api_key_id is None else str(api_key_id),
        "model": str(model),
        "adapter": None if adapter is None else str(adapter),
        "registry_version": None if registry_version is None else str(registry_version),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "latency_s": float(latency_s),
        "ttft_s": None if ttft_s is None else float(ttft_s),
        "status": status,
        "replica": replica,
        "hardware": hardware,
        "self_hosted_usd": self_hosted_usd,
        "hosted_usd": hosted_usd,
        "http_status": http_status,
        "error": None if error is None else redact(error)[:ERROR_CHARS],
        "row_id": uuid.uuid4().hex,
    }


def read_row(row: dict) -> dict:
    """A stored (or spooled) row as :meth:`Ledger.rows` returns it: ``ts`` timezone-aware UTC; a row an older ftops
    wrote (no ``hardware``: its ``replica`` held the hardware profile) with its profile in ``hardware`` and
    :data:`UNRECORDED_REPLICA` as its replica."""
    out = dict(row)
    out["ts"] = utc(out["ts"])
    if out.get("hardware") is None:  # written by an older ftops after the upgrade: its replica column held the hardware
        out["hardware"], out["replica"] = out["replica"], UNRECORDED_REPLICA
    return out


def utc(t: datetime) -> datetime:
    """Naive datetimes are taken as UTC."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
