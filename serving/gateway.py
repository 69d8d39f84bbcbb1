"""The ASGI front of the service: API keys, limits, model routing and bookkeeping around vLLM's own OpenAI app.

Everything that speaks the OpenAI wire protocol is vLLM's (``vllm.entrypoints`` FastAPI app); this module only
- checks the API key in constant time (every route but ``/livez``, ``/healthz``, ``/readyz``),
- refuses oversize bodies (413), malformed JSON (400) and more requests in flight than allowed (429 + Retry-After),
- maps ``model: NAME`` to the version its alias points at now (``NAME:VERSION``, which is also what pins); a model
  that may be served but cannot be loaded just now (the registry or the artifact store failed) answers 503
  ``model_unavailable`` with ``Retry-After``, one that is unknown or refused 404 saying why,
- lists base and adapters with their registry versions (``GET /v1/models``),
- records every request to an inference route in the cost ledger and the Prometheus series, with the ``usage`` the
  client received; a request refused before the engine (401, 400, 404, 405, 413, 429, 503) is a ``refused`` row with
  its status and reason, a stream that errors is ``failed`` with its error,
- while the service drains (SIGTERM, ``service.py``), answers every ``/v1`` request 503 ``shutting_down`` with
  ``Retry-After`` (an inference one gets its ``refused`` row) and counts the requests still running (``active``),
- answers every error in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``, redacted
  (``ftops/redact.py``: no password or secret key reaches a client or the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import Histogram

from ftops.api_keys import ADMIN_KEY_ID
from ftops.http import send_error, send_json
from ftops.redact import RedactFilter

log = logging.getLogger("ftops.serving")
log.addFilter(RedactFilter())  # service.py logs here too: its messages and tracebacks are redacted on the way out

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,100}")
OPEN_PATHS = frozenset({"/livez", "/healthz", "/readyz"})
GENERATE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})

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

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def client_request_id(scope: Scope) -> str:
    """The request's id: the client's ``X-Request-Id`` when it is a plain token (vLLM names its answer
    ``chatcmpl-<it>`` too, so a client finds its rows either way), else ``req-<random>``."""
    for k, v in scope.get("headers", []):
        if k == b"x-request-id" and _REQUEST_ID.fullmatch(v):
            return v.decode()
    return f"req-{uuid.uuid4().hex}"


async def refuse_unkeyed(scope: Scope, send: Send, message: str) -> bool:
    """``on_refused`` of the service's :class:`~ftops.api_keys.ApiKeyMiddleware`: an inference request without a valid
    key gets its ``refused`` row in the ledger with its 401; any other request is left to the middleware."""
    if scope["path"] in GENERATE_PATHS and _GATEWAY is not None:
        await _GATEWAY.refuse(scope, send, 401, message, "invalid_request_error", "invalid_api_key")
        return True
    return False


class HealthRoutes:
    """ASGI middleware answering ``/livez`` (and ``/healthz``) and ``/readyz`` from the service's own state, in JSON:
    ``/livez`` 503 when the engine is dead or the start keeps failing (the orchestrator restarts the process),
    ``/readyz`` 503 until every followed model is served or refused, with each model's state in the body."""

    def __init__(self, app, service: Callable[[], object]) -> None:
        self.app = app
        self.service = service  # -> FtopsLLM (None before BentoML built it): .liveness(), .readiness()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        svc = self.service() if scope["type"] == "http" and scope["path"] in OPEN_PATHS else None
        if svc is None:
            return await self.app(scope, receive, send)
        ok, body = svc.readiness() if scope["path"] == "/readyz" else svc.liveness()
        return await send_json(send, body, 200 if ok else 503)


@dataclass
class Routing:
    """What each served name means right now. Swapped atomically by the registry watcher."""

    base: str
    """The base model's served name."""
    current: dict[str, str] = field(default_factory=dict)
    """Registered model name -> version its alias points at (loaded)."""
    loaded: dict[str, dict] = field(default_factory=dict)
    """``NAME:VERSION`` -> {name, version, alias, path} of every loaded adapter version."""
    aliases: dict[str, str] = field(default_factory=dict)
    """Registered model name -> the alias it follows."""


@dataclass
class Mount:
    """An app composed beside inference at the top (the fine-tuning API: ``ftops.cli.service``), answering under
    ``prefixes`` behind the same API keys; ``start``/``stop`` run with the service."""

    prefixes: tuple[str, ...]
    app: Callable
    start: Callable[[], None] | None = None
    stop: Callable[[], None] | None = None
    openapi: dict | None = None
    """This app's part of ``/openapi.json`` (``paths`` and ``components.schemas``), which the gateway merges."""
    busy: Callable[[], bool] | None = None
    """True while this app runs work on this host that wants its CPU (a local fine-tuning job): the service pauses
    its engine meanwhile, between requests (``engine.pause_while_training``)."""


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


class Gateway:
    """The app mounted at ``/``: routes ``/v1/*`` to vLLM's app (``engine_app``) once the service is ready."""

    def __init__(self, service) -> None:
        global _GATEWAY
        self.service = service  # ftops.serving.service.FtopsLLM: .ready, .startup_error, .routing, .config, .ledger
        self.inflight = 0
        self.active = 0
        """HTTP requests being handled, their ledger rows included: the drain waits for 0."""
        _GATEWAY = self  # the one of this process: ApiKeyMiddleware records its 401s of inference routes through it
        self.mounts: list[Mount] = []
        self._openapi: dict | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # BentoML runs the service's own startup hooks
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        self.active += 1
        try:
            await self._route(scope, receive, send)
        finally:
            self.active -= 1

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if self.service is not None and self.service.draining is not None:  # started after the SIGTERM: refused
            message = (
                "The service is shutting down: requests in flight finish, new ones are refused. "
                "Retry (another replica, or this one once restarted)."
            )
            retry = [(b"retry-after", str(self.service.config.limits.retry_after_s).encode())]
            if path in GENERATE_PATHS:
                return await self.refuse(scope, send, 503, message, "server_error", "shutting_down", headers=retry)
            return await send_error(send, 503, message, "server_error", "shutting_down", headers=retry)
        if path in GENERATE_PATHS:
            if method != "POST":
                return await self.refuse(
                    scope, send, 405, f"{method} {path}: use POST", "invalid_request_error", "method_not_allowed"
                )
            return await self.generate(scope, receive, send)
        if path == "/v1/models" and method == "GET":
            return await self.models(send)
        if path == "/v1/usage" and method == "GET":
            return await self.usage(scope, send)
        if path == "/openapi.json" and method == "GET":  # behind the API key: it is the surface of a private service
            return await send_json(send, await self.openapi())
        for mount in self.mounts:
            if any(path == p or path.startswith(p + "/") for p in mount.prefixes):
                return await mount.app(scope, receive, send)
        return await send_error(
            send, 404, f"Unknown request URL: {method} {path}.", "invalid_request_error", "unknown_url"
        )

    async def openapi(self) -> dict:
        """The service's OpenAPI schema (``ftops.serving.openapi``), built once, off the event loop."""
        if self._openapi is None:
            from ftops.serving.openapi import document

            parts = [m.openapi for m in self.mounts if m.openapi]
            self._openapi = await asyncio.get_running_loop().run_in_executor(None, document, parts)
        return self._openapi

    def _not_ready(self) -> tuple[int, str] | None:
        svc = self.service
        if svc.startup_error:
            return 503, f"the service failed to start: {svc.startup_error}"
        if not svc.ready:
            return 503, "the engine is still loading; retry when /readyz answers 200"
        return None

    async def models(self, send: Send) -> None:
        if (err := self._not_ready()) is not None:
            return await send_error(send, err[0], err[1], "server_error", "not_ready", headers=[(b"retry-after", b"5")])
        svc, routing = self.service, self.service.routing
        listed = (await svc.engine_state.openai_serving_models.show_available_models()).model_dump()
        cards = []
        for card in listed["data"]:
            info = routing.loaded.get(card["id"])
            if info is None and card["id"] != routing.base:
                continue
            if info is None:  # the base: its name and digest, not a path on this server
                card.update(root=f"{routing.base}@sha256:{svc.base.sha256[:12]}")
            if info is not None:
                card.update(
                    parent=routing.base,
                    registry_name=info["name"],
                    registry_version=info["version"],
                    root=f"models:/{info['name']}/{info['version']}",
                )
            cards.append(card)
        for name, version in sorted(routing.current.items()):
            cards.append(
                {
                    "id": name,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "ftops",
                    "root": f"models:/{name}@{routing.aliases[name]}",
                    "parent": routing.base,
                    "registry_name": name,
                    "registry_alias": routing.aliases[name],
                    "registry_version": version,
                    "max_model_len": svc.config.engine.max_model_len,
                }
            )
        await send_json(send, {"object": "list", "data": cards})

    async def usage(self, scope: Scope, send: Send) -> None:
        if scope.get("state", {}).get("ftops_key_id") != ADMIN_KEY_ID:
            return await send_error(
                send,
                403,
                "GET /v1/usage needs the admin key (FTOPS_ADMIN_KEY).",
                "invalid_request_error",
                "forbidden",
            )
        from ftops.costs import model as costs

        report = await asyncio.get_running_loop().run_in_executor(None, costs.usage_report, self.service.ledger)
        await send_json(send, report)

    def resolve(self, model: str) -> tuple[str, str | None, str | None] | None:
        """``model`` -> (engine model name, registered name, version); None when unknown."""
        routing = self.service.routing
        if model == routing.base:
            return model, None, None
        if model in routing.current:
            version = routing.current[model]
            return f"{model}:{version}", model, version
        if model in routing.loaded:
            info = routing.loaded[model]
            return model, info["name"], info["version"]
        return None

    def not_found(self, model: str) -> str:
        """The 404 message for ``model``: why it is not served when the service knows (refused: not gated,
        revoked, digest mismatch; or could not be loaded just now)."""
        why = self.service.why_not_served(model)
        if why:
            return f"The model `{model}` is not served: {why}. GET /v1/models lists what this service serves."
        return (
            f"The model `{model}` does not exist or you do not have access to it. "
            "GET /v1/models lists what this service serves."
        )

    async def refuse(
        self,
        scope: Scope,
        send: Send,
        status: int,
        message: str,
        type_: str,
        code: str,
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        request_id: str | None = None,
        started: float | None = None,
        model: str | None = None,
        release: Callable[[], None] | None = None,
    ) -> None:
        """Answer an inference request with an error before the engine, and record it: a ``refused`` row with the
        status, the reason, zero tokens and the key id (None when no valid key was shown). The client gets the
        row's request id in ``x-request-id``."""
        started = time.perf_counter() if started is None else started
        request_id = request_id or client_request_id(scope)
        headers = [*(headers or []), (b"x-request-id", request_id.encode())]
        self.active += 1  # also when called from ApiKeyMiddleware, outside __call__
        try:
            await send_error(send, status, message, type_, code, param, headers)
            if release is not None:  # the concurrency slot, when one was taken
                release()
            if self.service is None:  # not built yet: nothing to record with
                return
            outcome = Outcome(status=status, refused=True, error=f"{code}: {message}")
            key_id = scope.get("state", {}).get("ftops_key_id")
            await self._record(request_id, key_id, model or "", None, None, outcome, started)
        finally:
            self.active -= 1

    async def generate(self, scope: Scope, receive: Receive, send: Send) -> None:
        svc = self.service
        limits = svc.config.limits
        started = time.perf_counter()
        key_id = scope.get("state", {}).get("ftops_key_id")
        request_id = client_request_id(scope)
        ids = {"request_id": request_id, "started": started}
        # 1. the body: refuse an oversize one before reading it all
        for k, v in scope.get("headers", []):
            if k == b"content-length" and v.isdigit() and int(v) > limits.max_body_bytes:
                return await self.refuse(
                    scope,
                    send,
                    413,
                    f"Request body is {int(v)} bytes; the limit is {limits.max_body_bytes}.",
                    "invalid_request_error",
                    "request_too_large",
                    **ids,
                )
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = Outcome(error_type="disconnected", error="the client left before sending its whole body")
                return await self._record(request_id, key_id, "", None, None, gone, started)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limits.max_body_bytes:
                return await self.refuse(
                    scope,
                    send,
                    413,
                    f"Request body exceeds the limit of {limits.max_body_bytes} bytes.",
                    "invalid_request_error",
                    "request_too_large",
                    **ids,
                )
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        if (err := self._not_ready()) is not None:
            return await self.refuse(
                scope, send, err[0], err[1], "server_error", "not_ready", headers=[(b"retry-after", b"5")], **ids
            )
        # 2. concurrency
        if self.inflight >= limits.max_concurrency:
            return await self.refuse(
                scope,
                send,
                429,
                f"Too many requests in flight (limit {limits.max_concurrency}); retry after {limits.retry_after_s} s.",
                "rate_limit_exceeded",
                "rate_limit_exceeded",
                headers=[(b"retry-after", str(limits.retry_after_s).encode())],
                **ids,
            )
        self.inflight += 1
        released = False

        def release() -> None:  # once the engine is done with it: the ledger write that follows holds no slot
            nonlocal released
            if not released:
                released = True
                self.inflight -= 1

        try:
            await self._generate(scope, receive, send, b"".join(chunks), started, key_id, request_id, release)
        finally:
            release()

    async def _generate(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        raw: bytes,
        started: float,
        key_id: str | None,
        request_id: str,
        release: Callable[[], None],
    ) -> None:
        svc = self.service
        ids = {"request_id": request_id, "started": started, "release": release}
        # 3. JSON and model
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            return await self.refuse(
                scope,
                send,
                400,
                f"We could not parse the JSON body of your request ({e}).",
                "invalid_request_error",
                "invalid_json",
                **ids,
            )
        if not isinstance(body, dict):
            return await self.refuse(
                scope,
                send,
                400,
                "The request body must be a JSON object.",
                "invalid_request_error",
                "invalid_json",
                **ids,
            )
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return await self.refuse(
                scope,
                send,
                400,
                "You must provide a model parameter.",
                "invalid_request_error",
                "missing_model",
                "model",
                **ids,
            )
        resolved = self.resolve(model)
        if resolved is None and ":" in model:
            resolved = await svc.load_pinned(model)  # a registry version of a served model, loaded on first use
        if resolved is None and (why := svc.transient_failure(model)) is not None:
            wait = svc.config.limits.retry_after_s
            return await self.refuse(  # it exists and may be served, the registry or the store failed just now
                scope,
                send,
                503,
                f"The model `{model}` cannot be loaded just now: {why}. Retry after {wait} s.",
                "server_error",
                "model_unavailable",
                "model",
                headers=[(b"retry-after", str(wait).encode())],
                model=model,
                **ids,
            )
        if resolved is None:
            return await self.refuse(
                scope,
                send,
                404,
                self.not_found(model),
                "invalid_request_error",
                "model_not_found",
                "model",
                model=model,
                **ids,
            )
        engine_model, adapter, version = resolved
        body["model"] = engine_model
        stream = bool(body.get("stream"))
        opts = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
        want_usage, want_continuous = (
            bool(opts.get("include_usage")),
            bool(opts.get("continuous_usage_stats")),
        )
        if stream:  # the ledger needs the tokens of every stream, also one cancelled half-way
            body["stream_options"] = {**opts, "include_usage": True, "continuous_usage_stats": True}
        new_raw = json.dumps(body).encode()
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(new_raw)).encode()))
        inner_scope = {
            **scope,
            "headers": headers,
            "root_path": "",
            "path": scope["path"],
            "raw_path": scope["path"].encode(),
        }
        sent_body = False

        async def inner_receive() -> dict:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": new_raw, "more_body": False}
            return await receive()

        outcome = Outcome()
        buffer = bytearray()
        is_sse = False
        recorded = False
        length: int | None = None  # the answer's Content-Length, when the engine sends one

        async def record() -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                release()
                await self._record(request_id, key_id, model, adapter, version, outcome, started)

        async def send_last(message: dict) -> None:
            # the row is committed before the bytes that complete the answer leave (the last of its Content-Length,
            # a stream's [DONE], or the last message): a client that has its whole answer has its row, even when
            # this process is killed the next instant (a replica lost mid-load)
            await record()
            await send(message)

        async def inner_send(message: dict) -> None:
            nonlocal is_sse, length
            if message["type"] == "http.response.start":
                outcome.status = message["status"]
                headers = dict(message.get("headers", []))
                is_sse = headers.get(b"content-type", b"").startswith(b"text/event-stream")
                with contextlib.suppress(ValueError):
                    length = int(headers.get(b"content-length", b""))
                return await send(message)
            if message["type"] != "http.response.body":
                return await send(message)
            chunk = message.get("body", b"")
            if not is_sse:
                buffer.extend(chunk)
                if not recorded and (not message.get("more_body") or (length is not None and len(buffer) >= length)):
                    _usage_from_json(bytes(buffer), outcome)
                    outcome.done = True
                    return await send_last(message)
                return await send(message)
            buffer.extend(chunk)
            out = bytearray()
            while (cut := buffer.find(b"\n\n")) >= 0:
                event = bytes(buffer[: cut + 2])
                del buffer[: cut + 2]
                out.extend(_rewrite_event(event, outcome, want_usage, want_continuous, started))
            if not message.get("more_body"):
                out.extend(buffer)
                buffer.clear()
            if outcome.done or not message.get("more_body"):  # [DONE] is in these bytes: a client stops reading there
                return await send_last({**message, "body": bytes(out)})
            await send({**message, "body": bytes(out)})

        try:
            with svc.engine_awake():
                await svc.engine_app(inner_scope, inner_receive, inner_send)
        except (OSError, asyncio.CancelledError):
            outcome.error_type = "disconnected"
            raise
        except Exception as e:  # the engine's app broke: the row says how
            outcome.error = f"{type(e).__name__}: {e}"
            raise
        finally:
            await record()  # unless the last message did: a cancelled stream, a broken engine

    async def _record(
        self,
        request_id: str,
        key_id: str | None,
        model: str,
        adapter: str | None,
        version: str | None,
        outcome: Outcome,
        started: float,
    ) -> None:
        latency = time.perf_counter() - started
        status = outcome.ledger_status()
        ttft = outcome.first_token_at - started if outcome.first_token_at is not None else None
        if status == "ok" and ttft is None:
            ttft = latency  # a non-streamed answer arrives whole
        base = self.service.routing.base
        label_model = adapter or (base if model == base else "unknown")  # a client's string is no label value
        LATENCY.labels(model=label_model, adapter=adapter or "").observe(latency)
        if ttft is not None and outcome.first_token_at is not None:
            TTFT.labels(model=label_model, adapter=adapter or "").observe(ttft)
        kwargs = dict(
            request_id=outcome.response_id or request_id,
            api_key_id=key_id,
            model=self.service.routing.base,
            adapter=adapter,
            registry_version=version,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            latency_s=latency,
            ttft_s=ttft,
            status=status,
            http_status=outcome.status or None,
            error=outcome.error,
        )
        from ftops.serving.ledger import spool_row

        ledger, url = self.service.ledger, self.service.config.ledger_url
        try:  # without an open ledger (still starting, or its database was down at start) the row is spooled
            write = ledger.record if ledger is not None else lambda **kw: spool_row(url, **kw)
            await asyncio.get_running_loop().run_in_executor(None, lambda: write(**kwargs))
        except Exception as e:  # the answer is already sent; a ledger outage must be loud, not fatal
            log.error("ledger: could not record %s: %s", request_id, e)


def _usage_from_json(raw: bytes, outcome: Outcome) -> None:
    try:
        payload = json.loads(raw)
        usage = payload.get("usage") or {}
    except (ValueError, AttributeError):
        return
    if isinstance(payload.get("id"), str):
        outcome.response_id = payload["id"]
    if outcome.error is None:
        outcome.error = _error_message(payload)
    outcome.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    outcome.completion_tokens = int(usage.get("completion_tokens") or 0)


def _rewrite_event(event: bytes, outcome: Outcome, want_usage: bool, want_continuous: bool, started: float) -> bytes:
    """Read usage from one SSE event and hide the usage fields the client did not ask for."""
    text = event.strip()
    if not text.startswith(b"data:"):
        return event
    data = text[5:].strip()
    if data == b"[DONE]":
        outcome.done = True
        return event
    try:
        chunk = json.loads(data)
    except ValueError:
        return event
    if not isinstance(chunk, dict):
        return event
    if outcome.response_id is None and isinstance(chunk.get("id"), str):
        outcome.response_id = chunk["id"]
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        outcome.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        outcome.completion_tokens = int(usage.get("completion_tokens") or 0)
    choices = chunk.get("choices")
    if outcome.first_token_at is None and choices:
        c = choices[0]
        if (c.get("delta") or {}).get("content") or c.get("text"):
            outcome.first_token_at = time.perf_counter()
    if "error" in chunk:
        outcome.error_type = "stream_error"
        outcome.error = _error_message(chunk) or "the stream sent an error event"
    if not choices and usage is not None:  # the final usage-only chunk
        return event if want_usage else b""
    if usage is not None and not want_continuous:
        chunk.pop("usage", None)
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
    return event


def _error_message(payload: dict) -> str | None:
    """The message of an OpenAI-shaped error (``{"error": {"message", "code", ...}}``), with its code; else None."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or "")
        return f"{error['code']}: {message}" if error.get("code") else message or None
    return str(error) if error else None


_GATEWAY: Gateway | None = None
