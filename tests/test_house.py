"""Each rule written once, read from the source: every ``FTOPS_*`` variable through ``ftops/env.py``, one API-key
loader and one constant-time comparison, one OpenAI error body, one adapter-against-base check, one alias lookup,
one model-name parser, and no library function longer than a reader can hold (80 lines).

The library is every module of the installed package (``tests/test_layers.py`` lists them); tests and benchmarks
are not library."""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

import pytest
from test_layers import MODULES, REPO

LIBRARY = {module: path for module, path in MODULES.items()}
ENV_MODULE = "ftops.env"
VARIABLE = re.compile(r"^FTOPS_[A-Z0-9_]+$")
MAX_FUNCTION_LINES = 80
#: rules that live in exactly one function of the library: name -> the module that defines it
ONE_DEFINITION = {
    "load_keys": "ftops.api_keys",
    "match_key": "ftops.api_keys",
    "bearer": "ftops.api_keys",
    "error_payload": "ftops.http",
    "error_body": "ftops.http",
    "send_error": "ftops.http",
    "send_json": "ftops.http",
    "base_mismatch": "ftops.adapter",
    "check_base": "ftops.adapter",
    "alias_version": "ftops.adapter",
    "parse_model_ref": "ftops.names",
    "replica_id": None,  # wherever the ledger keeps it, once
}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _where(module: str, node: ast.AST) -> str:
    return f"{LIBRARY[module].relative_to(REPO)}:{node.lineno}"


def variable_literals(module: str) -> list[str]:
    """Each string constant of ``module`` that is exactly an ``FTOPS_*`` variable's name."""
    return [
        f"{_where(module, n)} {n.value}"
        for n in ast.walk(_tree(LIBRARY[module]))
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and VARIABLE.match(n.value)
    ]


def test_every_ftops_variable_is_read_through_ftops_env():
    """A literal ``"FTOPS_HOME"`` outside ``ftops/env.py`` is a second source of truth for its name and default."""
    stray = [hit for module in LIBRARY if module != ENV_MODULE for hit in variable_literals(module)]
    assert stray == []


def test_ftops_env_declares_each_variable_once_with_a_doc():
    from ftops import env

    names = [v.name for v in vars(env).values() if isinstance(v, env.EnvVar)]
    assert len(names) == len(set(names)) == len(env.ALL) > 10
    assert all(VARIABLE.match(n) and env.ALL[n].doc for n in names)
    # every variable the docs of the library mention by name is declared (no undeclared FTOPS_* in use)
    mentioned = {m for path in LIBRARY.values() for m in re.findall(r"\bFTOPS_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())}
    assert mentioned - set(names) == set()


def test_the_env_check_catches_a_stray_read(tmp_path, monkeypatch):
    bad = tmp_path / "bad.py"
    bad.write_text('import os\nhome = os.environ.get("FTOPS_HOME", ".ftops")\n')
    monkeypatch.setitem(LIBRARY, "ftops.bad", bad)
    monkeypatch.setattr("test_house.REPO", tmp_path)
    assert variable_literals("ftops.bad") == ["bad.py:2 FTOPS_HOME"]


def _definitions() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for module, path in LIBRARY.items():
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found.setdefault(node.name, []).append(module)
    return found


@pytest.mark.parametrize("name", sorted(ONE_DEFINITION))
def test_each_shared_rule_is_defined_once(name):
    modules = _definitions().get(name, [])
    assert len(modules) == 1, f"{name} defined in {modules}"
    if ONE_DEFINITION[name]:
        assert modules == [ONE_DEFINITION[name]]


def _calls(attribute: str) -> list[str]:
    out = []
    for module, path in LIBRARY.items():
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Attribute) and node.attr == attribute:
                out.append(module)
    return out


def test_keys_are_compared_in_one_place():
    assert Counter(_calls("compare_digest")) == {"ftops.api_keys": 1}


def _error_dicts(module: str) -> list[str]:
    """``{"error": {"message": ...}}`` dict displays: OpenAI's error body built by hand."""
    hits = []
    for node in ast.walk(_tree(LIBRARY[module])):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                is_error = isinstance(key, ast.Constant) and key.value == "error"
                if is_error and isinstance(value, ast.Dict):
                    inner = {k.value for k in value.keys if isinstance(k, ast.Constant)}
                    if "message" in inner:
                        hits.append(_where(module, node))
    return hits


def test_openais_error_body_is_built_in_one_place():
    built = {module: hits for module in LIBRARY if (hits := _error_dicts(module))}
    assert list(built) == ["ftops.http"], built


def long_functions(module: str) -> list[str]:
    return [
        f"{_where(module, n)} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
        for n in ast.walk(_tree(LIBRARY[module]))
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES
    ]


def test_no_library_function_is_over_80_lines():
    assert [hit for module in LIBRARY for hit in long_functions(module)] == []


def test_the_length_check_can_fail(tmp_path, monkeypatch):
    bad = tmp_path / "long.py"
    bad.write_text("def f():\n" + "    x = 1\n" * 81)
    monkeypatch.setitem(LIBRARY, "ftops.long", bad)
    monkeypatch.setattr("test_house.REPO", tmp_path)
    assert long_functions("ftops.long") == ["long.py:1 f (82 lines)"]
