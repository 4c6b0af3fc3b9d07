"""No import circles inside curate/ and scorers/, lazy (in-function) imports included;
imports under ``if TYPE_CHECKING:`` do not run and do not count."""

from __future__ import annotations

import ast

from conftest import ROOT


def _modules() -> dict[str, ast.Module]:
    out = {}
    for pkg in ("curate", "scorers"):
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            out[name] = ast.parse(path.read_text())
    return out


def _imports(tree: ast.Module, known: set[str]) -> set[str]:
    """Modules of ``known`` that ``tree`` imports anywhere but under ``if TYPE_CHECKING``."""
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            out |= subs or {node.module}  # `from curate import selection` imports curate.selection
    return out & known


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (found := visit(v)):
                return found
        stack.pop()
        state[u] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_circles():
    mods = _modules()
    graph = {m: _imports(tree, set(mods)) - {m} for m, tree in mods.items()}
    assert "curate.runner" in graph["curate.pipeline"]  # the check sees lazy imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_check_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
