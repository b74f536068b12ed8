"""Check the direction of papycluster's imports: no cycles, no engine -> cluster.

The optional engines (Dask, Ray) are imported by ``papycluster.engines`` only, which
no lower layer imports: the core runs without them (see ``OPTIONAL``).

The layers point one way: ``cluster`` builds on ``engine`` and ``transport``, never the
reverse, and no two modules import each other, directly or around a loop. No module
imports another's private names (``from papycluster.x import _name``, or a module
``papycluster.x._y``): what one module uses of another is public in it, so a reader
sees the seam and a rename inside one module cannot break another. Every import
counts, also one inside a function: a deferred import hides a cycle from Python's
import machinery but not from a reader.

Usage: ``python3 .ci/import_graph.py [--show]``; exit status 1 names each violation.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "papycluster"
#: (importer prefix, imported prefix): imports that must not exist.
FORBIDDEN = [
    ("papycluster.engine", "papycluster.cluster"),
    ("papycluster.transport", "papycluster.cluster"),
    ("papycluster.transport", "papycluster.engine"),
    # the one handshake and framing sit below every layer that uses them
    ("papycluster.wire", "papycluster.transport"),
    ("papycluster.wire", "papycluster.cluster"),
    ("papycluster.wire", "papycluster.engine"),
    # the lanes of Dask and Ray are found through papycluster.hooks, never imported
    ("papycluster.engine", "papycluster.engines"),
    ("papycluster.transport", "papycluster.engines"),
    ("papycluster.wire", "papycluster.engines"),
    ("papycluster.cluster", "papycluster.engines"),
]

#: Optional third-party packages and the only part of papycluster that may import them.
OPTIONAL = {"dask": "papycluster.engines", "distributed": "papycluster.engines",
            "ray": "papycluster.engines"}


def optional_imports(path: Path) -> set[str]:
    """The OPTIONAL packages that ``path`` imports (absolute imports only)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        found |= {n.split(".")[0] for n in names} & set(OPTIONAL)
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(path: Path, name: str) -> list[tuple[ast.AST, list[str]]]:
    """Each import statement of ``path`` (module ``name``) with the dotted names it
    imports, relative imports resolved: ``import a.b`` gives ``a.b``; ``from .x import
    y`` in ``pkg.m`` gives ``pkg.x.y``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.append((node, [alias.name for alias in node.names]))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.append((node, [f"{prefix}.{alias.name}" for alias in node.names]))
    return found


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports (a name imported from a package
    counts as its submodule when there is one, else as the package)."""
    found: set[str] = set()
    for node, targets in imported_names(path, name):
        if isinstance(node, ast.ImportFrom):  # the module imported from runs too
            targets = [*targets, targets[0].rpartition(".")[0]]
        for target in targets:
            if target in modules:
                found.add(target)
            elif target.rpartition(".")[0] in modules and isinstance(node, ast.ImportFrom):
                found.add(target.rpartition(".")[0])
    found.discard(name)
    return found


def _is_private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def private_imports() -> list[str]:
    """Every import of a private name or module of the package, as ``importer: name``."""
    found = []
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        name = module_name(path)
        for _, targets in imported_names(path, name):
            for target in targets:
                parts = target.split(".")
                if parts[0] == PACKAGE and any(_is_private(p) for p in parts[1:]):
                    found.append(f"private: {name} imports {target}")
    return found


def graph() -> dict[str, set[str]]:
    paths = sorted((ROOT / PACKAGE).rglob("*.py"))
    modules = {module_name(p) for p in paths}
    edges = {module_name(p): imports_of(p, module_name(p), modules) for p in paths}
    # A package's __init__ re-exporting its submodules is not a cycle with them.
    for name, targets in edges.items():
        for target in list(targets):
            if name.startswith(target + "."):
                targets.discard(target)
        if any(other.startswith(name + ".") for other in modules):
            targets -= {t for t in targets if t.startswith(name + ".")}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def main(argv: list[str]) -> int:
    edges = graph()
    if "--show" in argv:
        for name in sorted(edges):
            print(name, "->", ", ".join(sorted(edges[name])) or "-")
    problems = []
    for component in cycles(edges):
        problems.append("cycle: " + " <-> ".join(component))
    for name, targets in sorted(edges.items()):
        for target in sorted(targets):
            for importer, imported in FORBIDDEN:
                if (name == importer or name.startswith(importer + ".")) and (
                        target == imported or target.startswith(imported + ".")):
                    problems.append(f"layer: {name} imports {target}")
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        name = module_name(path)
        for package in sorted(optional_imports(path)):
            allowed = OPTIONAL[package]
            if not (name == allowed or name.startswith(allowed + ".")):
                problems.append(f"optional: {name} imports {package} (only {allowed} may)")
    problems += private_imports()
    for problem in problems:
        print(problem)
    if not problems:
        print(f"import graph: {len(edges)} modules, no cycle, layers point one way, "
              "no private import")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
