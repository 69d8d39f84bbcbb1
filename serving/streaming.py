"""The engine's answer on its way to the client: what it says for the ledger, and the usage the client did not ask for
taken out of a stream.

Every stream is asked for its usage (:func:`ask_for_usage`: the ledger needs the tokens of every stream, also one
cancelled half-way); :class:`AnswerRelay` passes vLLM's answer on, reads the :class:`~ftops.serving.recording.Outcome`
from it (a JSON body, or each server-sent event: :func:`rewrite_event`) and has the ledger row committed before the
bytes that complete the answer leave.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Awaitable, Callable

from ftops.serving.recording import Outcome

Send = Callable[[dict], Awaitable[None]]


def ask_for_usage(body: dict) -> tuple[bool, bool]:
    """Have a streamed request (``body``, changed in place) report its usage in every event, and return what the
    client asked for itself: ``(include_usage, continuous_usage_stats)``."""
    opts = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
    want_usage, want_continuous = (
        bool(opts.get("include_usage")),
        bool(opts.get("continuous_usage_stats")),
    )
    if bool(body.get("stream")):  # the ledger needs the tokens of every stream, also one cancelled half-way
        body["stream_options"] = {**opts, "include_usage": True, "continuous_usage_stats": True}
    return want_usage, want_continuous


class AnswerRelay:
    """The ``send`` vLLM's app answers through: passes each message on to the client's ``send``, filling
    :attr:`outcome` as it goes, and calls ``commit`` (the ledger row) once, before the bytes that complete the answer
    (the last of its Content-Length, a stream's [DONE], or the last message); :meth:`finish` calls it otherwise."""

    def __init__(
        self,
        send: Send,
        want_usage: bool,
        want_continuous: bool,
        started: float,
        commit: Callable[[Outcome], Awaitable[None]],
    ) -> None:
        self.send = send
        self.want_usage, self.want_continuous, self.started = want_usage, want_continuous, started
        self.commit = commit
        self.outcome = Outcome()
        self.recorded = False
        self.buffer = bytearray()
        self.is_sse = False
        self.length: int | None = None  # the answer's Content-Length, when the engine sends one

    async def finish(self) -> None:
        """Commit the outcome unless that happened already (a cancelled stream, a broken engine come here)."""
        if not self.recorded:
            self.recorded = True
            await self.commit(self.outcome)

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.outcome.status = message["status"]
            headers = dict(message.get("headers", []))
            self.is_sse = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            with contextlib.suppress(ValueError):
                self.length = int(headers.get(b"content-length", b""))
            return await self.send(message)
        if message["type"] != "http.response.body":
            return await self.send(message)
        if self.is_sse:
            return await self._events(message)
        return await self._whole(message)

    async def _send_last(self, message: dict) -> None:
        # the row is committed before the bytes that complete the answer leave: a client that has its whole answer
        # has its row, even when this process is killed the next instant (a replica lost mid-load)
        await self.finish()
        await self.send(message)

    async def _whole(self, message: dict) -> None:
        """A JSON answer: its usage, id and error are read once it is complete."""
        self.buffer.extend(message.get("body", b""))
        complete = not message.get("more_body") or (self.length is not None and len(self.buffer) >= self.length)
        if not self.recorded and complete:
            usage_from_json(bytes(self.buffer), self.outcome)
            self.outcome.done = True
            return await self._send_last(message)
        return await self.send(message)

    async def _events(self, message: dict) -> None:
        """A stream: each complete event is read and rewritten (:func:`rewrite_event`); a partial one waits for its
        end in the next message."""
        self.buffer.extend(message.get("body", b""))
        out = bytearray()
        while (cut := self.buffer.find(b"\n\n")) >= 0:
            event = bytes(self.buffer[: cut + 2])
            del self.buffer[: cut + 2]
            out.extend(rewrite_event(event, self.outcome, self.want_usage, self.want_continuous, self.started))
        if not message.get("more_body"):
            out.extend(self.buffer)
            self.buffer.clear()
        if self.outcome.done or not message.get("more_body"):  # [DONE] is in these bytes: a client stops reading there
            return await self._send_last({**message, "body": bytes(out)})
        await self.send({**message, "body": bytes(out)})


def usage_from_json(raw: bytes, outcome: Outcome) -> None:
    """Read the id, usage and error of a whole JSON answer into ``outcome``."""
    try:
        payload = json.loads(raw)
        usage = payload.get("usage") or {}
    except (ValueError, AttributeError):
        return
    if isinstance(payload.get("id"), str):
        outcome.response_id = payload["id"]
    if outcome.error is None:
        outcome.error = error_message(payload)
    outcome.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    outcome.completion_tokens = int(usage.get("completion_tokens") or 0)


def rewrite_event(event: bytes, outcome: Outcome, want_usage: bool, want_continuous: bool, started: float) -> bytes:
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
    _read_chunk(chunk, outcome)
    usage = chunk.get("usage")
    if not chunk.get("choices") and usage is not None:  # the final usage-only chunk
        return event if want_usage else b""
    if usage is not None and not want_continuous:
        chunk.pop("usage", None)
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
    return event


def _read_chunk(chunk: dict, outcome: Outcome) -> None:
    """What one streamed chunk tells the ledger: the answer's id, the usage so far, the first token's time, an
    error event."""
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
        outcome.error = error_message(chunk) or "the stream sent an error event"


def error_message(payload: dict) -> str | None:
    """The message of an OpenAI-shaped error (``{"error": {"message", "code", ...}}``), with its code; else None."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or "")
        return f"{error['code']}: {message}" if error.get("code") else message or None
    return str(error) if error else None
