"""Errors a person can act on: what was wrong, where, and what to do."""

from __future__ import annotations


class FtopsError(Exception):
    """Bad input or a refused operation. The CLI prints the message on one line and exits 1 (2 for usage)."""

    exit_code = 1


class TransientError(FtopsError):
    """Reading the registry, the artifact store or the disk failed for a passing reason; retrying may succeed."""


class UsageError(FtopsError):
    """The command was called wrongly (unknown key, bad value). Exit code 2."""

    exit_code = 2
