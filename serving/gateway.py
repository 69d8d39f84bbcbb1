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

It composes the three concerns beside it: ``routing.py`` (model name -> engine name, ``/v1/models``), ``recording.py``
(the :class:`~ftops.serving.recording.Outcome` of a request, its ledger row and series) and ``streaming.py`` (the
engine's answer on its way back: usage read, server-sent events rewritten).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ftops.api_keys import ADMIN_KEY_ID
from ftops.costs.usage import usage_report
from ftops.http import send_error, send_json
from ftops.serving.openapi import document
from ftops.serving.recording import InferenceRequest, Outcome, record
from ftops.serving.routing import model_cards, not_found_message, resolve
from ftops.serving.streaming import AnswerRelay, ask_for_usage

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,100}")
OPEN_PATHS = frozenset({"/livez", "/healthz", "/readyz"})
GENERATE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})

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


class Gateway:
    """The app mounted at ``/``: routes ``/v1/*`` to vLLM's app (``engine_app``) once the service is ready."""

    def __init__(self, service=None) -> None:
        self.service = service  # ftops.serving.service.FtopsLLM: .ready, .startup_error, .routing, .config, .ledger
        self.inflight = 0
        self.active = 0
        """HTTP requests being handled, their ledger rows included: the drain waits for 0."""
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

    async def refuse_unkeyed(self, scope: Scope, send: Send, message: str) -> bool:
        """``on_refused`` of the service's :class:`~ftops.api_keys.ApiKeyMiddleware`: an inference request without a
        valid key gets its ``refused`` row in the ledger with its 401; any other request is left to the middleware."""
        if scope["path"] in GENERATE_PATHS:
            await self.refuse(scope, send, 401, message, "invalid_request_error", "invalid_api_key")
            return True
        return False

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
        svc = self.service
        listed = (await svc.engine_state.openai_serving_models.show_available_models()).model_dump()
        cards = model_cards(listed["data"], svc.routing, svc.base.sha256, svc.config.engine.max_model_len)
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
        report = await asyncio.get_running_loop().run_in_executor(None, usage_report, self.service.ledger)
        await send_json(send, report)

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
            await record(self.service, InferenceRequest(request_id, key_id, started, model or ""), outcome)
        finally:
            self.active -= 1

    async def generate(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An inference request: its body within the limit, the service ready, a concurrency slot, then
        :meth:`_generate` (the slot is given back once the engine is done with it)."""
        limits = self.service.config.limits
        started = time.perf_counter()
        key_id = scope.get("state", {}).get("ftops_key_id")
        request = InferenceRequest(client_request_id(scope), key_id, started)
        ids = {"request_id": request.request_id, "started": started}
        raw = await self._read_body(scope, receive, send, request, ids)
        if raw is None:
            return
        if (err := self._not_ready()) is not None:
            return await self.refuse(
                scope, send, err[0], err[1], "server_error", "not_ready", headers=[(b"retry-after", b"5")], **ids
            )
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
            await self._generate(scope, receive, send, raw, request, release)
        finally:
            release()

    async def _read_body(
        self, scope: Scope, receive: Receive, send: Send, request: InferenceRequest, ids: dict
    ) -> bytes | None:
        """The request's body; None when it was answered already: over ``max_body_bytes`` (413, an oversize one
        refused before it is read) or the client left before sending it all (recorded)."""
        limit = self.service.config.limits.max_body_bytes
        for k, v in scope.get("headers", []):
            if k == b"content-length" and v.isdigit() and int(v) > limit:
                message = f"Request body is {int(v)} bytes; the limit is {limit}."
                await self.refuse(scope, send, 413, message, "invalid_request_error", "request_too_large", **ids)
                return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = Outcome(error_type="disconnected", error="the client left before sending its whole body")
                await record(self.service, request, gone)
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                text = f"Request body exceeds the limit of {limit} bytes."
                await self.refuse(scope, send, 413, text, "invalid_request_error", "request_too_large", **ids)
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _generate(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        raw: bytes,
        request: InferenceRequest,
        release: Callable[[], None],
    ) -> None:
        """Route the request's ``model``, then run vLLM's app on it, its answer relayed and recorded."""
        ids = {"request_id": request.request_id, "started": request.started, "release": release}
        body = await self._parse(scope, send, raw, ids)
        if body is None:
            return
        model = body["model"]
        resolved = await self._resolve(scope, send, model, ids)
        if resolved is None:
            return
        engine_model, request.adapter, request.version = resolved
        request.model = model
        body["model"] = engine_model
        want_usage, want_continuous = ask_for_usage(body)
        new_raw = json.dumps(body).encode()

        async def commit(outcome: Outcome) -> None:
            release()
            await record(self.service, request, outcome)

        relay = AnswerRelay(send, want_usage, want_continuous, request.started, commit)
        await self._run_engine(_engine_scope(scope, new_raw), _replay(new_raw, receive), relay)

    async def _parse(self, scope: Scope, send: Send, raw: bytes, ids: dict) -> dict | None:
        """The request's JSON object with a ``model``; None when refused (400)."""
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            message = f"We could not parse the JSON body of your request ({e})."
            await self.refuse(scope, send, 400, message, "invalid_request_error", "invalid_json", **ids)
            return None
        if not isinstance(body, dict):
            message = "The request body must be a JSON object."
            await self.refuse(scope, send, 400, message, "invalid_request_error", "invalid_json", **ids)
            return None
        model = body.get("model")
        if not isinstance(model, str) or not model:
            message = "You must provide a model parameter."
            await self.refuse(scope, send, 400, message, "invalid_request_error", "missing_model", "model", **ids)
            return None
        return body

    async def _resolve(
        self, scope: Scope, send: Send, model: str, ids: dict
    ) -> tuple[str, str | None, str | None] | None:
        """``model`` -> (engine model name, registered name, version), a pinned ``NAME:VERSION`` loaded on first use;
        None when refused: 503 while it cannot be loaded just now, 404 when it is unknown or not served."""
        svc = self.service
        resolved = resolve(svc.routing, model)
        if resolved is None and ":" in model:
            resolved = await svc.load_pinned(model)  # a registry version of a served model, loaded on first use
        if resolved is None and (why := svc.transient_failure(model)) is not None:
            wait = svc.config.limits.retry_after_s
            await self.refuse(  # it exists and may be served, the registry or the store failed just now
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
            return None
        if resolved is None:
            message = not_found_message(model, svc.why_not_served(model))
            await self.refuse(
                scope, send, 404, message, "invalid_request_error", "model_not_found", "model", model=model, **ids
            )
        return resolved

    async def _run_engine(self, scope: Scope, receive: Receive, relay: AnswerRelay) -> None:
        """vLLM's app on the rewritten request, answering through ``relay``; the outcome is recorded in every case
        (a cancelled stream, a client gone, a broken engine too)."""
        svc = self.service
        try:
            with svc.engine_awake():
                await svc.engine_app(scope, receive, relay)
        except (OSError, asyncio.CancelledError):
            relay.outcome.error_type = "disconnected"
            raise
        except Exception as e:  # the engine's app broke: the row says how
            relay.outcome.error = f"{type(e).__name__}: {e}"
            raise
        finally:
            await relay.finish()  # unless the last message did: a cancelled stream, a broken engine


def _engine_scope(scope: Scope, raw: bytes) -> Scope:
    """The request's scope as vLLM's app gets it: at its own root, with the Content-Length of the rewritten body."""
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
    headers.append((b"content-length", str(len(raw)).encode()))
    return {**scope, "headers": headers, "root_path": "", "path": scope["path"], "raw_path": scope["path"].encode()}


def _replay(raw: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the rewritten body ``raw`` first, then what the client sends (its disconnect)."""
    sent_body = False

    async def inner_receive() -> dict:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return inner_receive
