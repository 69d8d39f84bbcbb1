"""Secrets never leave: mask credentials in any text bound for a person, a client or a log.

``redact(text)`` masks the password of every ``scheme://user:password@host`` URL and every value of the secret
environment variables in :data:`SECRET_ENV` that is set. Apply it where text leaves the process: the CLI's error line,
the service's error bodies and its log records (:class:`RedactFilter`).
"""

from __future__ import annotations

import logging
import os
import re

from ftops.env import SECRETS

MASK = "***"

SECRET_ENV: tuple[str, ...] = (
    *(v.name for v in SECRETS),
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "HF_TOKEN",
    "PGPASSWORD",
)
"""Environment variables whose values are secrets wherever they appear."""

# scheme://user:password@ (the password runs to the last "@" before a "/" or whitespace: unencoded "@" in it is masked)
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@]*:)(?P<password>[^\s/]+)(?=@)")
_MIN_SECRET_LEN = 4  # a shorter value would mask ordinary words


def redact(text: object) -> str:
    """``text`` (or ``str(text)``) with URL passwords and secret environment values replaced by ``***``."""
    out = _URL_PASSWORD.sub(lambda m: m["head"] + MASK, str(text))
    for name in SECRET_ENV:
        value = os.environ.get(name, "")
        if len(value) >= _MIN_SECRET_LEN:
            out = out.replace(value, MASK)
    return out


class RedactFilter(logging.Filter):
    """A logging filter that redacts each record's message and traceback (attach it to a logger or a handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
