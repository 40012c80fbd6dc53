"""The package's layering: no import cycle among cxrtool's modules (counting imports inside
functions too, so a cycle cannot hide behind a lazy import), and the library never imports the CLI.

    python tests/test_layering.py     # prints every cycle (strongly connected group) and exits 1 if any
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "cxrtool"


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """module -> the cxrtool modules it imports anywhere in its body."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = known(name) if name.startswith(root.name) else None
                if target and target != module:
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other, directly or around a loop (Tarjan's SCCs)."""
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
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_in_the_package():
    assert cycles(import_graph()) == []


def test_the_checker_sees_a_cycle_through_a_lazy_import(tmp_path):
    pkg = tmp_path / "cxrtool"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cxrtool.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from cxrtool import a\n    return a\n")
    assert cycles(import_graph(pkg)) == [["cxrtool.a", "cxrtool.b"]]


def test_the_library_never_imports_the_cli():
    graph = import_graph()
    offenders = {m: sorted(t for t in targets if t.startswith("cxrtool.cli")) for m, targets in graph.items()
                 if not m.startswith("cxrtool.cli") and m != "cxrtool.__main__"}
    assert {m: t for m, t in offenders.items() if t} == {}


if __name__ == "__main__":
    groups = cycles(import_graph())
    for group in groups:
        print(" <-> ".join(group))
    print(f"{len(groups)} import cycle(s) in {SRC}")
    sys.exit(1 if groups else 0)
