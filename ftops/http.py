"""OpenAI's error body and the two plain ASGI answers every ftops service sends.

One shape for every error of every route (the gateway, the fine-tuning API, the key check):
``{"error": {"message", "type", "param", "code"}}``, with the message redacted (:func:`ftops.redact.redact`: no
password or secret key reaches a client), as the installed ``openai`` client parses it into ``APIStatusError``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from ftops.redact import redact

Send = Callable[[dict], Awaitable[None]]


def error_payload(
    message: str, type_: str = "invalid_request_error", code: str | None = None, param: str | None = None
) -> dict:
    """OpenAI's error object, its message redacted."""
    return {"error": {"message": redact(message), "type": type_, "param": param, "code": code}}


def error_body(
    message: str, type_: str = "invalid_request_error", code: str | None = None, param: str | None = None
) -> bytes:
    """:func:`error_payload` as JSON bytes."""
    return json.dumps(error_payload(message, type_, code, param)).encode()


async def send_json(
    send: Send, payload: object, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer an ASGI request with ``payload`` as JSON (``payload`` may be bytes already)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(
    send: Send,
    status: int,
    message: str,
    type_: str,
    code: str | None = None,
    param: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Answer an ASGI request with OpenAI's error body and ``status``."""
    await send_json(send, error_body(message, type_, code, param), status, headers)
