"""API keys on the wire, for every service ftops runs (``ftops serve``'s gateway, ``ftops jobs serve``): the bearer
token a request presents, and which configured key it is, compared in constant time."""

from __future__ import annotations

import hmac


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
