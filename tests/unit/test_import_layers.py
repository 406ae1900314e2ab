"""The daemon's import graph points downward: packages in layers, no cycle, no hidden one."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ckptd"

# Lowest first. A module may import its own package or a package of a lower layer.
LAYERS: list[set[str]] = [
    {
        "ckptd",
        "ckptd.strict_json",
        "ckptd.exit_codes",
        "ckptd.job_name",
        "ckptd.options",
        "ckptd.run_dir",
        "ckptd.redaction",
        "ckptd.log",
        "ckptd.requests",
        "ckptd.events",
    },
    {
        "ckptd.storage",
        "ckptd.reporting",
        "ckptd.control",
        "ckptd.process",
        "ckptd.sources",
        "ckptd.integrity",
        "ckptd.guard",
    },
    {"ckptd.storage.remote"},
    {"ckptd.config"},
    {"ckptd.channel", "ckptd.progress"},
    {"ckptd.supervisor"},
    {"ckptd.cli"},
    {"ckptd.__main__"},
]

# Imported inside a function only so that an optional, heavy dependency (fsspec,
# prometheus_client) loads when the feature is configured; never to hide a cycle.
LAZY_FOR_OPTIONAL_DEPENDENCY = {
    ("ckptd.supervisor.arbiter", "ckptd.supervisor.remote_copy"),
    ("ckptd.supervisor.ending", "ckptd.supervisor.remote_copy"),
    ("ckptd.supervisor.launcher", "ckptd.supervisor.remote_copy"),
    ("ckptd.supervisor.arbiter", "ckptd.storage.remote.outcomes"),
    ("ckptd.supervisor.daemon", "ckptd.reporting.prometheus"),
    ("ckptd.storage.remote.listing", "ckptd.storage.remote.store"),
    ("ckptd.storage.remote.listing", "ckptd.storage.remote.parts"),
    ("ckptd.cli.commands", "ckptd.supervisor.daemon"),
    ("ckptd.cli.commands", "ckptd.supervisor"),
    ("ckptd.cli.commands", "ckptd.cli.preflight"),
    ("ckptd.cli.commands", "ckptd.log"),
    ("ckptd.cli.remote", "ckptd.control.keys"),
    # model-signing and cryptography (the signing extra) load only when a key is configured.
    ("ckptd.config", "ckptd.integrity"),
    ("ckptd.cli.commands", "ckptd.integrity"),
    ("ckptd.supervisor.signatures", "ckptd.integrity"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(modules: dict[str, Path]) -> list[tuple[str, str, bool]]:
    """(importer, imported, inside a function) for every import of one of ``modules``."""
    found = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                submodules = [f"{node.module}.{a.name}" for a in node.names]
                named = [m for m in submodules if m in modules]
                candidates = named or [node.module]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            for target in candidates:
                if target in modules and target not in (name, "ckptd"):
                    found.append((name, target, node.col_offset > 0))
    return found


def _package(module: str, modules: dict[str, Path]) -> str:
    """The layered unit a module belongs to: its package, or itself at the top level."""
    if modules[module].name == "__init__.py":
        return module
    parent = module.rpartition(".")[0]
    return module if parent == "ckptd" else parent


def _layer(unit: str) -> int:
    for index, layer in enumerate(LAYERS):
        if unit in layer:
            return index
    raise AssertionError(f"{unit} is in no layer of LAYERS: add it where it belongs")


def test_every_import_points_to_its_own_package_or_a_lower_layer() -> None:
    """No module imports a package of its own layer or above (no upward import, typing ones too)."""
    modules = _modules()
    upward = []
    for importer, imported, _ in _imports(modules):
        mine, theirs = _package(importer, modules), _package(imported, modules)
        below = _layer(theirs) < _layer(mine) or _layer(mine) == 0  # the foundation: flat modules
        if mine != theirs and not below:
            upward.append(f"{importer} -> {imported}")
    assert upward == []


def test_no_module_is_in_an_import_cycle() -> None:
    """Following every import, lazy and typing-only ones included, never leads back."""
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for importer, imported, _ in _imports(modules):
        graph[importer].add(imported)
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for module in sorted(modules):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_imports_inside_functions_are_only_for_optional_dependencies() -> None:
    """A function-level import of ckptd code is listed with its reason, never a hidden cycle."""
    modules = _modules()
    lazy = {(a, b) for a, b, inside in _imports(modules) if inside}
    assert lazy - LAZY_FOR_OPTIONAL_DEPENDENCY == set()
