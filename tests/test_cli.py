"""The command-line contract: --help everywhere, exit 2 on usage errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ftops.cli import build_parser


def _subcommands(parser) -> dict:
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            return dict(action.choices)
    return {}


def _all_commands(parser, prefix=()):
    for name, sub in _subcommands(parser).items():
        yield (*prefix, name), sub
        yield from _all_commands(sub, (*prefix, name))


COMMANDS = [path for path, _ in _all_commands(build_parser())]


def ftops(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ftops.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_top_level_help_lists_every_subcommand():
    result = ftops("--help")
    assert result.returncode == 0
    for name in _subcommands(build_parser()):
        assert name in result.stdout
    assert {"base"} <= set(_subcommands(build_parser()))


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_subcommand_has_a_help_that_explains_it(command):
    parser = build_parser()
    sub = dict(_all_commands(parser))[command]
    text = sub.format_help()
    assert sub.description and len(sub.description) > 20, f"{' '.join(command)} has no real description"
    assert "usage:" in text


def test_unknown_subcommand_is_a_usage_error():
    result = ftops("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_missing_argument_is_a_usage_error():
    result = ftops("base", "import")
    assert result.returncode == 2
