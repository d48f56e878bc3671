"""The structure holds: no import cycle in ``runtime/`` or ``export/``, and runtime imports only go
down the layers DESIGN.md draws. Imports are read from the source (``ast``), those inside functions
too, so a lazy import cannot hide a circle.

    python tests/test_layering.py [ROOT]     # prints modules, import edges and cycles of a checkout
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "export")

# runtime's layers, lowest first: a module may import its own layer and the ones below, never above.
RUNTIME_LAYERS = (
    ("runtime.errors", "runtime.cpu", "runtime.workers", "runtime.sessions"),
    ("runtime.scoring", "runtime.parity"),
    ("runtime.preprocess",),
    ("runtime.bundle",),
    ("runtime.stores",),
    ("runtime.ingest",),
    ("runtime.encoder",),
    ("runtime.explain",),
    ("runtime.serve",),
    ("runtime.cli", "runtime.__main__", "runtime"),
)


def modules(root: Path) -> dict[str, Path]:
    """Every module of the packages: dotted name -> file (a package is its ``__init__``)."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports(root: Path) -> dict[str, set[str]]:
    """module -> the modules of the packages it imports (anywhere in its body)."""
    mods = modules(root)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")
                    up = up[: len(up) - (node.level - 1)]
                    base = ".".join([*up, base] if base else up)
                # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name``, mod.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods:  # ``import a.b.c`` where only a.b is ours, or an attribute path
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_of(module: str) -> int | None:
    for i, layer in enumerate(RUNTIME_LAYERS):
        if any(module == p or module.startswith(p + ".") for p in layer if p != "runtime"):
            return i
    return len(RUNTIME_LAYERS) - 1 if module == "runtime" else None


def test_no_import_cycle() -> None:
    graph = imports(ROOT)
    assert len(graph) > 60 and sum(map(len, graph.values())) > 100  # the walk found the packages
    assert cycles(graph) == []


def test_runtime_imports_go_down_the_layers() -> None:
    upward = []
    for mod, deps in imports(ROOT).items():
        if not mod.startswith("runtime"):
            continue
        here = layer_of(mod)
        assert here is not None, f"{mod} is in no layer of RUNTIME_LAYERS (tests/test_layering.py)"
        for dep in deps:
            if dep.startswith("runtime") and layer_of(dep) > here:
                upward.append(f"{mod} -> {dep}")
    assert upward == []


def test_the_checker_sees_a_circle(tmp_path: Path) -> None:
    """Two modules importing each other, one of them lazily inside a function, are one cycle."""
    pkg = tmp_path / "runtime"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from runtime.a import g\n")
    (tmp_path / "export").mkdir()
    assert cycles(imports(tmp_path)) == [["runtime.a", "runtime.b"]]


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    g = imports(root)
    found = cycles(g)
    print(f"{len(g)} modules, {sum(map(len, g.values()))} import edges, {len(found)} cycle(s)")
    for c in found:
        print("  cycle:", " <-> ".join(c))
