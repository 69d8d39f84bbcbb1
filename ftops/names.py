"""Names that become folders, registered models or aliases are checked here: no path traversal, no surprises."""

from __future__ import annotations

import re

from ftops.errors import UsageError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is 1-128 characters of letters, digits, ``.``, ``_`` and ``-`` starting with a letter
    or digit and not containing ``..``; raise :class:`UsageError` otherwise."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise UsageError(
            f"invalid {what} {name!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
            " (no '/', no '..')"
        )
    return name
