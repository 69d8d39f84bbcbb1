"""The bookkeeping of every inference request: what happened to it (:class:`Outcome`), its ledger row and its
Prometheus series (``ftops_request_latency_seconds``, ``ftops_time_to_first_token_seconds``).

A request refused before the engine is a ``refused`` row with its status and reason; one answered is ``ok``, one whose
client left ``cancelled``, one whose stream said it failed ``failed`` (:meth:`Outcome.ledger_status`). Without an
open ledger (still starting, or its database was down at start) the row is spooled (``ftops.serving.ledger``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from prometheus_client import Histogram

from ftops.serving.ledger import spool_row

log = logging.getLogger("ftops.serving")

# Prometheus metrics are declared once per process, where their module is imported (the client's own idiom: a second
# declaration of a name is an error); BentoML's multiprocess registry collects them from every worker.
LATENCY = Histogram(
    "ftops_request_latency_seconds",
    "End-to-end request latency, by model and adapter",
    ["model", "adapter"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
TTFT = Histogram(
    "ftops_time_to_first_token_seconds",
    "Time to the first streamed token, by model and adapter",
    ["model", "adapter"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)


@dataclass
class Outcome:
    """What happened to one generate request, for the ledger and metrics."""

    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_at: float | None = None
    done: bool = False
    error_type: str | None = None
    response_id: str | None = None
    """The ``id`` the client received (``chatcmpl-...``): the ledger's request id."""
    refused: bool = False
    """Answered by the gateway before the engine (401, 400, 404, 405, 413, 429, 503)."""
    error: str | None = None
    """Why it failed or was refused: the error message the client got (in a stream: the error event's)."""

    def ledger_status(self) -> str:
        if self.refused:
            return "refused"
        if self.status == 200:
            if self.error_type == "stream_error":
                return "failed"  # the stream said so, then ended with [DONE]: not an answer
            return "ok" if self.done else "cancelled"  # cancelled: the client went away mid-stream
        if self.status == 0 and self.error_type == "disconnected":
            return "cancelled"  # the client left before any answer
        if 400 <= self.status < 500:
            return "refused"  # the engine's own validation (e.g. max_tokens over the context)
        return "failed"


@dataclass
class InferenceRequest:
    """One request to an inference route as its ledger row and its series name it."""

    request_id: str
    """The client's ``X-Request-Id`` or ``req-<random>`` (the row's id unless the answer had one of its own)."""
    key_id: str | None
    """The id of the API key it showed; None when it showed no valid one."""
    started: float
    """``time.perf_counter()`` when the gateway got it."""
    model: str = ""
    """The ``model`` the client asked for ("" before it was read)."""
    adapter: str | None = None
    """The registered model it was routed to (None: the base, or not routed)."""
    version: str | None = None
    """That model's registry version."""


async def record(service, request: InferenceRequest, outcome: Outcome) -> None:
    """Observe ``request``'s latency (and time to first token) and write its ledger row through ``service``
    (``FtopsLLM``: ``.routing``, ``.ledger``, ``.config.ledger_url``). A ledger outage is logged, never raised: the
    answer is already sent."""
    latency = time.perf_counter() - request.started
    status = outcome.ledger_status()
    ttft = outcome.first_token_at - request.started if outcome.first_token_at is not None else None
    if status == "ok" and ttft is None:
        ttft = latency  # a non-streamed answer arrives whole
    base = service.routing.base
    _observe(base, request, outcome, latency, ttft)
    row = dict(
        request_id=outcome.response_id or request.request_id,
        api_key_id=request.key_id,
        model=base,
        adapter=request.adapter,
        registry_version=request.version,
        prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        latency_s=latency,
        ttft_s=ttft,
        status=status,
        http_status=outcome.status or None,
        error=outcome.error,
    )
    ledger, url = service.ledger, service.config.ledger_url
    try:  # without an open ledger (still starting, or its database was down at start) the row is spooled
        write = ledger.record if ledger is not None else lambda **kw: spool_row(url, **kw)
        await asyncio.get_running_loop().run_in_executor(None, lambda: write(**row))
    except Exception as e:  # the answer is already sent; a ledger outage must be loud, not fatal
        log.error("ledger: could not record %s: %s", request.request_id, e)


def _observe(base: str, request: InferenceRequest, outcome: Outcome, latency: float, ttft: float | None) -> None:
    """The request's Prometheus series: latency always, time to first token once a streamed token came."""
    adapter = request.adapter
    label_model = adapter or (base if request.model == base else "unknown")  # a client's string is no label value
    LATENCY.labels(model=label_model, adapter=adapter or "").observe(latency)
    if ttft is not None and outcome.first_token_at is not None:
        TTFT.labels(model=label_model, adapter=adapter or "").observe(ttft)
