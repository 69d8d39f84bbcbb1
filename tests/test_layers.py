"""The house's layering, read from the source: one installed namespace, each folder imports only the floors below its
own (ground, then the data contract and costs, then training, registry, serving, then jobs and advise, then the
command line), and no module imports itself round a circle.

Imports inside functions count too: a lazy import of a later stage is still a dependency on it."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: the floors, bottom to top; a folder's modules may import the floors below its own and nothing else. Folders on one
#: floor are siblings: neither imports the other. The ground (``ftops/``) is floor 0, the command line the top.
FLOORS = (
    ("ftops",),
    ("expectations", "costs"),
    ("training",),
    ("registry",),
    ("serving",),
    ("jobs", "advise"),
    ("cli",),
)
FOLDERS = [folder for floor in FLOORS for folder in floor]
#: folder in the repository -> installed package
PACKAGES = {folder: "ftops" if folder == "ftops" else f"ftops.{folder}" for folder in FOLDERS}
STAGES = tuple(f for f in FOLDERS if f != "ftops")
#: bare names that must never be imported (only ``ftops.*`` is installed)
BARE = (*STAGES,)


def _forbidden(folder: str) -> tuple[str, ...]:
    """Every package that ``folder`` may not import: its siblings and every floor above it."""
    level = next(i for i, floor in enumerate(FLOORS) if folder in floor)
    return tuple(PACKAGES[f] for i, floor in enumerate(FLOORS) for f in floor if i >= level and f != folder)


FORBIDDEN = {("ground" if f == "ftops" else f): _forbidden(f) for f in FOLDERS}


def _modules() -> dict[str, Path]:
    """Installed module name -> source file, for every module of the package."""
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _imports(module: str, path: Path) -> list[tuple[int, str, bool]]:
    """``(line, imported module, at module level)`` for every import statement of ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            out.append((node.lineno, name, id(node) in top_level))
            # ``from ftops.registry import eval`` imports the module ftops.registry.eval
            out += [(node.lineno, f"{name}.{a.name}", id(node) in top_level) for a in node.names]
    return out


def _layer(module: str) -> str:
    for stage in STAGES:
        if module == f"ftops.{stage}" or module.startswith(f"ftops.{stage}."):
            return stage
    return "ground"


MODULES = _modules()


def test_the_package_has_every_stage():
    assert {_layer(m) for m in MODULES} == {"ground", *STAGES}
    assert len(MODULES) > 40


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_only_earlier_layers(module):
    bad = [
        f"{MODULES[module].relative_to(REPO)}:{line} imports {name}"
        for line, name, _ in _imports(module, MODULES[module])
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[_layer(module)])
    ]
    assert bad == []


def test_no_python_file_imports_a_bare_stage_name():
    """Only ``ftops.*`` is installed: ``import training`` would pick up whatever a user's project calls training."""
    bad = []
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert len(listed) > 60
    for path in (REPO / name for name in listed if (REPO / name).is_file()):
        for line, name, _ in _imports("x", path):
            if name.split(".")[0] in BARE:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert bad == []


def test_no_import_circles():
    """Over every import (module level and inside functions) between the project's own modules."""
    graph = {m: {n for _, n, _ in _imports(m, p) if n in MODULES and n != m} for m, p in MODULES.items()}
    # a package's __init__ is imported with each of its modules: an edge from a package to its own module is no circle
    for m in graph:
        graph[m] = {n for n in graph[m] if not n.startswith(m + ".")}
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert circles == []


def test_the_layer_rules_catch_a_violation(tmp_path):
    """The checks above can fail: a ground module that imports serving is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from ftops.serving import ledger\n")
    names = [n for _, n, _ in _imports("ftops.bad", bad)]
    assert "ftops.serving.ledger" in names
    assert any(n.startswith(f) for n in names for f in FORBIDDEN[_layer("ftops.bad")])
