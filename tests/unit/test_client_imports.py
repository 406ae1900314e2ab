"""Client modules import downward only: no cycle, none hidden in a function or TYPE_CHECKING."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = "ckptd_client"
SOURCE = Path(__file__).resolve().parents[2] / "client" / PACKAGE
# The framework a module needs before it can be imported at all (an optional extra).
FRAMEWORKS = {name: name for name in ("torch", "lightning", "transformers", "keras")}


def _modules() -> dict[str, Path]:
    found = {f"{PACKAGE}.{p.stem}": p for p in SOURCE.glob("*.py") if p.stem != "__init__"}
    return {PACKAGE: SOURCE / "__init__.py", **found}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The client modules ``name`` imports anywhere in its file (functions and
    ``if TYPE_CHECKING:`` blocks included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([package, *([base] if base else [])])
            for alias in node.names:  # a submodule, or a name defined in ``base`` itself
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
    return {m for m in found if m in modules and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for target in sorted(graph[node]):
            cycle = visit(target, [*path, node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def test_the_client_import_graph_has_no_cycle() -> None:
    """Walking every import statement of every client module finds no cycle."""
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert graph[f"{PACKAGE}._client"], "the walk found none of _client's imports"
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check above would fail on a cycle, however long."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_channels_and_saves_never_import_the_client() -> None:
    """Only the package and the helpers built on the client import ``_client``."""
    modules = _modules()
    importers = {n for n, p in modules.items() if f"{PACKAGE}._client" in _imports(n, p, modules)}
    assert importers <= {
        PACKAGE,
        f"{PACKAGE}._frameworks",
        f"{PACKAGE}.torch",
        f"{PACKAGE}.lightning",
        f"{PACKAGE}.keras",
        f"{PACKAGE}.transformers",
    }


@pytest.mark.parametrize("name", sorted(_modules()))
def test_each_module_imports_first_in_a_fresh_interpreter(name: str) -> None:
    """``import <module>`` as the first client import of a new interpreter succeeds."""
    framework = FRAMEWORKS.get(name.rpartition(".")[2])
    script = (
        "import importlib, sys\n"
        f"framework = {framework!r}\n"
        "if framework:\n"
        "    try:\n"
        "        importlib.import_module(framework)\n"
        "    except Exception:\n"
        "        sys.exit(3)\n"
        f"importlib.import_module({name!r})\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"KERAS_BACKEND": "torch", **os.environ},  # keras's default backend is tensorflow
        timeout=120,
    )
    if result.returncode == 3:
        pytest.skip(f"{framework} cannot be imported here")
    assert result.returncode == 0, result.stderr
