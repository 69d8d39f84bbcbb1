"""Names that become folders, registered models or aliases are checked here: no path traversal, no surprises."""

from __future__ import annotations

import re

from ftops.errors import UsageError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: an alias of a registered model (``production``, ``staging``, ``canary``): MLflow's own limit is 255 characters
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,254}$")


def is_name(name: object) -> bool:
    """1-128 letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit, without ``..``."""
    return isinstance(name, str) and bool(_NAME.match(name)) and ".." not in name


def is_alias(alias: object) -> bool:
    """1-255 letters, digits, ``_`` and ``-``, starting with a letter or digit."""
    return isinstance(alias, str) and bool(_ALIAS.match(alias))


def parse_model_ref(ref: object) -> tuple[str, str | None, str | None] | None:
    """``NAME``, ``NAME@ALIAS`` or ``NAME:VERSION`` -> ``(name, alias, version)`` (the parts not given are None);
    None when ``ref`` is none of them (the name and alias rules above, a version of digits)."""
    if not isinstance(ref, str):
        return None
    name, at, alias = ref.partition("@")
    if at:
        return (name, alias, None) if is_name(name) and is_alias(alias) else None
    name, colon, version = ref.partition(":")
    if colon:
        return (name, None, version) if is_name(name) and version.isdigit() else None
    return (name, None, None) if is_name(name) else None


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if :func:`is_name`; raise :class:`UsageError` otherwise."""
    if not is_name(name):
        raise UsageError(
            f"invalid {what} {name!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
            " (no '/', no '..')"
        )
    return name
