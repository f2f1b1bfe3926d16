"""The package's import graph has no cycle: every vlfss module can be read in an order where each imports only
modules read before it (function-level imports included; only ``if TYPE_CHECKING:`` blocks are exempt)."""

from __future__ import annotations

import ast
from pathlib import Path

import vlfss

ROOT = Path(vlfss.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = ["vlfss", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The vlfss modules ``path`` imports (resolving relative imports; `from pkg import sub` -> pkg.sub)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.split(".")[0] == "vlfss")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] != "vlfss":
                    continue
                subs = {f"{target}.{a.name}" for a in child.names} & modules
                found.update(subs or {target})
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(files)
    return {m: _imports(p, modules) for m, p in files.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def dfs(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := dfs(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := dfs(m)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_library_modules_do_not_import_the_cli():
    graph = _graph()
    offenders = sorted(m for m, deps in graph.items() if not m.startswith("vlfss.cli")
                       and any(d.startswith("vlfss.cli") for d in deps))
    assert offenders == [], f"library modules importing the CLI: {offenders}"


def test_modeling_does_not_import_the_layers_above_it():
    above = ("vlfss.segmenter", "vlfss.engine", "vlfss.evaluation", "vlfss.cli", "vlfss.app", "vlfss.labeling")
    graph = _graph()
    offenders = sorted((m, d) for m, deps in graph.items() if m.startswith("vlfss.modeling")
                       for d in deps if d.startswith(above))
    assert offenders == [], f"modeling imports code built on it: {offenders}"
