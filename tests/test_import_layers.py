"""Imports between clipadapt's packages point downward only (docs/architecture.md, "Layers"):

    cli, the root package  ->  eval, report, heads  ->  methods, features  ->  encoders, data, adapters
                           ->  ops, errors, fileio, constants, _lazy, builtin

An `ast` scan of every module, module-level and function-level imports alike (an import inside a function is
still a dependency; it only hides a cycle from the interpreter). A package may import its own layer or any
layer below; the packages of one layer must not import each other in a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import clipadapt

SRC = Path(clipadapt.__file__).parent

LAYERS = {
    "clipadapt": 4, "cli": 4,
    "eval": 3, "report": 3, "heads": 3,  # heads: a fitted method + its model; uses eval.fewshot (never the reverse)
    "methods": 2, "features": 2,
    "encoders": 1, "data": 1, "adapters": 1,  # adapters: an Encoder may carry an IMO adapter (load_encoder)
    "ops": 0, "errors": 0, "fileio": 0, "constants": 0, "_lazy": 0, "builtin": 0, "argtypes": 0,
}

# (file relative to src/clipadapt, imported package): why the upward import is needed. Delete an entry when it
# is no longer used (the test says so).
EXCEPTIONS: dict[tuple[str, str], str] = {}


def _package(module: str) -> str:
    """'clipadapt.features.io' -> 'features'; 'clipadapt', its __init__ and __main__ -> 'clipadapt'."""
    parts = module.split(".")
    return "clipadapt" if len(parts) == 1 or parts[1] in ("__init__", "__main__") else parts[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every clipadapt import in `path`, relative imports resolved."""
    rel = path.relative_to(SRC.parent).with_suffix("")
    here = list(rel.parts[:-1])  # the package a relative import starts from (for __init__ too)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
    return [(line, m) for line, m in found if m == "clipadapt" or m.startswith("clipadapt.")]


def _edges() -> list[tuple[str, int, str, str]]:
    """(file, line, importing package, imported package) for every import that crosses packages."""
    edges = []
    for path in sorted(SRC.rglob("*.py")):
        file = path.relative_to(SRC).as_posix()
        src = _package("clipadapt." + file.removesuffix(".py").replace("/", "."))
        for line, module in _imports(path):
            dst = _package(module)
            if dst != src:
                edges.append((file, line, src, dst))
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_package_has_a_layer():
    packages = {_package("clipadapt." + p.relative_to(SRC).with_suffix("").as_posix().replace("/", "."))
                for p in SRC.rglob("*.py")}
    assert packages == set(LAYERS), f"give these a layer in LAYERS: {sorted(packages ^ set(LAYERS))}"


def test_imports_point_downward():
    upward = [
        f"{file}:{line}: {src} (layer {LAYERS[src]}) imports {dst} (layer {LAYERS[dst]}), an upper layer"
        for file, line, src, dst in _edges()
        if LAYERS[dst] > LAYERS[src] and (file, dst) not in EXCEPTIONS
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for file, line, src, dst in _edges():
        if (file, dst) not in EXCEPTIONS:
            graph.setdefault(src, set()).add(dst)
            where.setdefault((src, dst), f"{file}:{line}")
    problems = []
    for component in _cycles(graph):
        members = set(component)
        links = [f"{where[(a, b)]}: {a} imports {b}" for a in component for b in sorted(graph[a] & members)]
        problems.append(f"cycle between {', '.join(component)}:\n  " + "\n  ".join(links))
    assert not problems, "\n".join(problems)


def test_every_exception_is_still_needed():
    used = {(file, dst) for file, _, _, dst in _edges()}
    stale = sorted(set(EXCEPTIONS) - used)
    assert not stale, f"no longer imported, delete from EXCEPTIONS: {stale}"


def test_the_scan_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "clipadapt"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "x.py").write_text("def f():\n    from ..features import io\n    import clipadapt.eval\n")
    monkeypatch.setitem(globals(), "SRC", pkg)
    assert _imports(pkg / "data" / "x.py") == [(2, "clipadapt.features"), (3, "clipadapt.eval")]
    assert [(s, d) for _, _, s, d in _edges()] == [("data", "features"), ("data", "eval")]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
