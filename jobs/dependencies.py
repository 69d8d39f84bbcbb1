"""What the fine-tuning API's routes read from a request: the app's state, the caller's key and the page size.

The app keeps its store, settings and the imported bases on ``app.state`` (``ftops.jobs.api.build_app``); a route
reaches them through ``request.app.state``, never through a module global.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request

from ftops.api_keys import ADMIN_KEY_ID
from ftops.jobs.protocol import ApiError
from ftops.jobs.store import JobStore


@dataclass
class JobsApiSettings:
    """What the API enforces."""

    max_upload_bytes: int = 100_000_000
    """Largest upload; more answers 413."""
    bases: tuple[str, ...] = ()
    """Base model names a job may fine-tune (``ftops base list``); empty: every imported base."""


def job_store(request: Request) -> JobStore:
    return request.app.state.store


def api_settings(request: Request) -> JobsApiSettings:
    return request.app.state.settings


def allowed_bases(request: Request) -> list[str]:
    """The imported bases (``app.state.known_bases()``) a job may fine-tune under the settings."""
    known: Callable[[], list[str]] = request.app.state.known_bases
    settings = api_settings(request)
    return [b for b in known() if not settings.bases or b in settings.bases]


def owner(request: Request) -> str | None:
    """The key id that authenticated the request (set by the service's API key middleware); None for the admin."""
    key_id = (request.scope.get("state") or {}).get("ftops_key_id")
    if not key_id:  # never served without the middleware in front
        raise ApiError(401, "You didn't provide an API key.", "invalid_api_key")
    return None if key_id == ADMIN_KEY_ID else key_id


def page_limit(raw: str | None, default: int = 20) -> int:
    """The ``limit`` query parameter: 1 to 100, ``default`` when absent."""
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise ApiError(400, f"limit must be a whole number from 1 to 100 (got {raw!r})", "invalid_value", "limit")
    return int(raw)
