"""No import cycle between hpcserve_jupyter's modules, lazy imports inside functions included.

A cycle that only closes through a lazy import does not break at import time today, but it ties
the modules into one knot: neither can be read, tested or moved without the other, and the next
top-level import turns it into a partially-initialised-module error. So every `import` statement
counts, wherever it sits (module level, function, method, try block), except those under
`if TYPE_CHECKING:` -- they never run, they only feed the type checker.

How an import becomes an edge (importer -> imported module):
- `import a.b.c` -> `a.b.c`; relative imports are resolved against the importer's package;
- `from X import n` -> `X.n` when `n` is a submodule (so `from . import x` is an edge to the
  submodule x), otherwise -> `X` itself: `from pkg.mod import name` is an edge to `pkg.mod` and
  not to `pkg/__init__`, while `from ..targets import name` is an edge to `targets/__init__`.
  A submodule that imports a name from its own package's `__init__`, which imports the submodule
  back, is therefore a cycle -- as it is at import time;
- `importlib.import_module("literal")` counts like `import literal`.
Modules loaded by reference strings (the plugin tables, `plugins.load("pkg.mod:Class")`) are not
edges: that indirection is the plugin mechanism, not an import.

Run `python tests/test_import_cycles.py` to print the cycles with the edges that make them.
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = "hpcserve_jupyter"


@dataclass(frozen=True)
class Edge:
    """One import statement of one module that names another module of the package."""

    source: str
    target: str
    path: Path
    line: int
    lazy: bool  # inside a function: runs on the call, not at import time

    def where(self, root: Path) -> str:
        try:
            shown = self.path.relative_to(root)
        except ValueError:
            shown = self.path
        return f"{shown}:{self.line}{' (lazy)' if self.lazy else ''}"


def module_files(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under src/package (`__init__` names the
    package)."""
    found: dict[str, Path] = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """(dotted name, names imported from it or None, line, lazy) for each import that runs."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.base = module.split(".") if is_package else module.split(".")[:-1]
        self.found: list[tuple[str, list[str] | None, int, bool]] = []
        self.depth = 0  # >0 inside a function body

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:  # only the else branch ever runs
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((alias.name, None, node.lineno, self.depth > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            keep = len(self.base) - (node.level - 1)
            if keep <= 0:
                return  # beyond the top-level package
            name = ".".join(self.base[:keep] + ([node.module] if node.module else []))
        else:
            name = node.module or ""
        self.found.append((name, [a.name for a in node.names], node.lineno, self.depth > 0))

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if (called == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str) and not node.args[0].value.startswith(".")):
            self.found.append((node.args[0].value, None, node.lineno, self.depth > 0))
        self.generic_visit(node)


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of `name` that is one of our modules."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_edges(src: Path = SRC, package: str = PACKAGE) -> list[Edge]:
    modules = module_files(src, package)
    edges: list[Edge] = []
    for module, path in modules.items():
        visitor = _Imports(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        for name, names, line, lazy in visitor.found:
            if name != package and not name.startswith(package + "."):
                continue
            targets: set[str] = set()
            for n in names or [None]:
                sub = f"{name}.{n}" if n and n != "*" else None
                target = sub if sub in modules else _known(name, modules)
                if target is not None:
                    targets.add(target)
            edges += [Edge(module, t, path, line, lazy) for t in sorted(targets)]
    return edges


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module, and modules importing
    themselves (Tarjan), each sorted; the list sorted too."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(found)


def _path(start: str, goal: str, members: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest import path start -> ... -> goal inside one component (breadth first)."""
    back: dict[str, str] = {start: start}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        if v == goal:
            path = [v]
            while path[-1] != start:
                path.append(back[path[-1]])
            return path[::-1]
        for w in sorted(graph.get(v, ())):
            if w in members and w not in back:
                back[w] = v
                queue.append(w)
    return []


def loops(edges: list[Edge], component: list[str]) -> list[list[str]]:
    """For each import inside the component, a shortest loop through it; together they show
    every import that would have to go (deduplicated, shortest first)."""
    members = set(component)
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
    seen: dict[tuple[str, ...], list[str]] = {}
    for u in sorted(members):
        for v in sorted(graph.get(u, set()) & members):
            loop = [u, u] if u == v else [u, *_path(v, u, members, graph)]
            ring = loop[:-1]
            turn = ring.index(min(ring))
            seen.setdefault(tuple(ring[turn:] + ring[:turn]), loop)
    return sorted(seen.values(), key=lambda loop: (len(loop), loop))


def describe(edges: list[Edge], found: list[list[str]], root: Path = REPO) -> str:
    """Each cycle: its modules, the loops through them, and every edge inside it (file:line)."""
    out = [f"{len(found)} import cycle(s) (strongly connected components):"]
    for n, component in enumerate(found, 1):
        members = set(component)
        out.append(f"\n[{n}] {len(component)} module(s): {', '.join(component)}")
        out += ["    loop: " + " -> ".join(loop) for loop in loops(edges, component)]
        out.append("    edges:")
        for e in sorted(edges, key=lambda e: (e.source, e.target, e.line)):
            if e.source in members and e.target in members:
                out.append(f"    {e.source} -> {e.target}   {e.where(root)}")
    return "\n".join(out)


# --------------------------------------------------------------------------- the checker, checked


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_finds_lazy_relative_and_package_cycles_and_skips_type_checking(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "def f():\n    from .b import g\n",           # lazy, relative
        "pkg/b.py": "import pkg.a\n",                               # absolute, top level
        "pkg/c.py": "from typing import TYPE_CHECKING\n"
                    "if TYPE_CHECKING:\n    from .d import X\nelse:\n    X = None\n",
        "pkg/d.py": "from pkg import c\n",                           # `from . import module`
        "pkg/sub/__init__.py": "def kinds():\n    from . import one\n",
        "pkg/sub/one.py": "from ..sub import registry\n",            # a name of sub/__init__
        "pkg/sub/two.py": "from . import one\nfrom pkg.sub.one import x\n",
        "pkg/e.py": "import importlib\nM = importlib.import_module('pkg.e')\n",  # itself
    })
    edges = import_edges(tmp_path, "pkg")
    pairs = {(e.source, e.target) for e in edges}
    assert ("pkg.a", "pkg.b") in pairs and ("pkg.b", "pkg.a") in pairs
    assert ("pkg.c", "pkg.d") not in pairs  # under TYPE_CHECKING: never runs
    assert ("pkg.d", "pkg.c") in pairs
    assert ("pkg.sub.one", "pkg.sub") in pairs and ("pkg.sub", "pkg.sub.one") in pairs
    assert ("pkg.sub.two", "pkg.sub.one") in pairs and ("pkg.sub.two", "pkg.sub") not in pairs
    lazy = {e.source: e.lazy for e in edges}
    assert lazy["pkg.a"] and not lazy["pkg.b"]
    assert cycles(edges) == [["pkg.a", "pkg.b"], ["pkg.e"], ["pkg.sub", "pkg.sub.one"]]
    text = describe(edges, cycles(edges), tmp_path)
    assert "pkg.a -> pkg.b   pkg/a.py:2 (lazy)" in text
    assert "pkg.b -> pkg.a   pkg/b.py:1" in text
    assert "loop: pkg.a -> pkg.b -> pkg.a" in text and "loop: pkg.e -> pkg.e" in text


def test_the_checker_sees_every_module_of_the_package():
    modules = module_files(SRC, PACKAGE)
    assert len(modules) == len(list((SRC / PACKAGE).rglob("*.py")))
    assert {"hpcserve_jupyter", "hpcserve_jupyter.remote", "hpcserve_jupyter.targets",
            "hpcserve_jupyter.targets.slurm"} <= set(modules)
    assert not [m for m in modules if "__init__" in m]
    sources = {e.source for e in import_edges()}
    # every module but the leaves imports something of ours; the leaves are few
    assert len(sources) > len(modules) // 2


# --------------------------------------------------------------------------- the package itself


def test_no_import_cycles():
    edges = import_edges()
    found = cycles(edges)
    assert not found, describe(edges, found)


if __name__ == "__main__":
    all_edges = import_edges()
    print(describe(all_edges, cycles(all_edges)))
