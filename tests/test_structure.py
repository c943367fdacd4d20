"""The shape of the package: no import cycle, config free of train/, small modules, a true module map."""

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PKG = SRC / "fitvision"
MAX_LINES = 420  # "no module much over 400 lines"


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        name = ".".join(f.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """fitvision modules a file imports anywhere (function-level imports too). ``from fitvision
    import X`` is left out: the root package only re-exports names, lazily."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fitvision."):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fitvision."))
    return {m for m in found if m in modules}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    modules = _modules()
    graph = {m: _imports(f, modules) - {m} for m, f in modules.items()}
    assert _cycles(graph) == []
    # and the check finds one where there is one
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_config_imports_nothing_from_train():
    modules = _modules()
    train = {m for m in _imports(PKG / "config.py", modules) if m.startswith("fitvision.train")}
    assert train == set()


def test_no_module_much_over_400_lines():
    sizes = {m: len(f.read_text().splitlines()) for m, f in _modules().items()}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


def test_internals_module_map_matches_the_tree():
    """docs/internals.md opens with a module map: one line per module, as `path/module.py`."""
    text = (SRC.parent / "docs" / "internals.md").read_text()
    section = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    mapped = set(re.findall(r"^\|? ?`([\w/]+\.py)`", section, flags=re.M))
    tree = {str(f.relative_to(PKG)) for f in PKG.rglob("*.py") if f.name != "__main__.py"}
    assert mapped == tree
