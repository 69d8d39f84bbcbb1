"""API keys, for every service ftops runs (``ftops serve``'s gateway, ``ftops jobs serve``): where they come from,
the one rule they follow, and the one middleware that checks them.

- :func:`load_keys`: ``{key id: key}`` from a YAML keys file, then ``$FTOPS_API_KEY`` (id ``default``) and
  ``$FTOPS_ADMIN_KEY`` (id ``admin``), the environment winning; every key at least :data:`MIN_KEY_LENGTH` characters.
- :class:`ApiKeyMiddleware`: ``Authorization: Bearer KEY`` on every route but the open (health) ones, compared in
  constant time against every key; the matching key's id goes to ``scope["state"]["ftops_key_id"]``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path

from ftops.config import read_yaml
from ftops.env import FTOPS_ADMIN_KEY, FTOPS_API_KEY
from ftops.errors import UsageError
from ftops.http import send_error

DEFAULT_KEY_ID = "default"
#: the key id that may call every route and see every owner's files, jobs and usage
ADMIN_KEY_ID = "admin"
MIN_KEY_LENGTH = 16
MISSING_KEY = f"You didn't provide an API key. Send it as 'Authorization: Bearer KEY' ({FTOPS_API_KEY.name})."
WRONG_KEY = "Incorrect API key provided."


def load_keys(keys_file: str | Path | None = None) -> dict[str, str]:
    """``{key id: key}`` from ``keys_file`` (a YAML mapping key id -> key), then ``$FTOPS_API_KEY`` as ``default``
    and ``$FTOPS_ADMIN_KEY`` as ``admin``. Empty when none is configured (the caller says whether that is allowed).

    Raises :class:`UsageError` (exit 2) for a keys file that is not such a mapping or a key shorter than
    :data:`MIN_KEY_LENGTH`; the message names the key ids, never the keys."""
    keys: dict[str, str] = {}
    if keys_file is not None:
        data = read_yaml(Path(keys_file), "API keys", error=UsageError)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise UsageError(f"{keys_file}: expected a YAML mapping of key id -> key (strings)")
        keys.update(data)
    for var, key_id in ((FTOPS_API_KEY, DEFAULT_KEY_ID), (FTOPS_ADMIN_KEY, ADMIN_KEY_ID)):
        if var.is_set():
            keys[key_id] = var.get()
    short = sorted(k for k, v in keys.items() if len(v) < MIN_KEY_LENGTH)
    if short:
        raise UsageError(
            f"API keys {', '.join(short)} are shorter than {MIN_KEY_LENGTH} characters; use random keys"
            " (e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    return keys


def bearer(scope: dict) -> str | None:
    """The token of an ASGI request's ``Authorization: Bearer TOKEN`` header; None when there is none."""
    for k, v in scope.get("headers", []):
        if k == b"authorization":
            value = v.decode("latin-1")
            if value[:7].lower() == "bearer ":
                return value[7:].strip()
    return None


def match_key(presented: str | None, keys: dict[str, str]) -> str | None:
    """The id of the key ``presented`` equals, compared in constant time against every key; None if none."""
    if not presented:
        return None
    found = None
    for key_id, key in keys.items():
        if hmac.compare_digest(presented.encode(), key.encode()):
            found = key_id
    return found


#: what the middleware calls instead of its plain 401 for a refused request: ``(scope, send, message)``; returning
#: False leaves the answer to the middleware
Refuse = Callable[[dict, Callable, str], Awaitable[bool]]


class ApiKeyMiddleware:
    """ASGI middleware: a valid ``Authorization: Bearer KEY`` on every route but ``open_paths``.

    ``keys`` is called per request (the service may load its keys after the middleware is built). ``on_refused``
    lets the caller answer a refused request itself (the gateway records an inference request's refusal in the
    ledger); otherwise the answer is OpenAI's 401 ``invalid_api_key``."""

    def __init__(
        self,
        app,
        keys: Callable[[], dict[str, str]],
        open_paths: frozenset[str] = frozenset({"/livez", "/healthz", "/readyz"}),
        on_refused: Refuse | None = None,
    ) -> None:
        self.app, self.keys, self.open_paths, self.on_refused = app, keys, open_paths, on_refused

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        presented = bearer(scope)
        key_id = match_key(presented, self.keys())
        if key_id is None:
            message = WRONG_KEY if presented else MISSING_KEY
            if self.on_refused is not None and await self.on_refused(scope, send, message):
                return None
            return await send_error(send, 401, message, "invalid_request_error", "invalid_api_key")
        scope.setdefault("state", {})["ftops_key_id"] = key_id
        return await self.app(scope, receive, send)
