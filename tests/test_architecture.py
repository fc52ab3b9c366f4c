"""The layout's rules, checked on the source: no import cycles, method names only in the registry's reach."""

import ast
import re
from pathlib import Path

from domix.methods.registry import COMPARE, STAGE1, STAGE2

SRC = Path(__file__).resolve().parents[1] / "src" / "domix"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every domix module ``path`` imports, at the top or inside a function (``from a import b`` counts
    a.b when that is a module, else a)."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    tree = ast.parse(path.read_text())
    for block in ast.walk(tree):  # `if TYPE_CHECKING:` imports never run: they are for type checkers
        if isinstance(block, ast.If) and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING":
            block.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    return {name: imports_of(path, set(files)) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_even_through_imports_inside_functions():
    graph = import_graph()
    assert "domix.finetune.run" in graph and "domix.methods.registry" in graph["domix.finetune.config"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_layers_do_not_import_trainers():
    """A layer (what a model is made of) never imports a training loop or a recipe."""
    graph = import_graph()
    layers = [m for m in graph if m.endswith(".layer")]
    assert layers
    for layer in layers:
        bad = {m for m in graph[layer] if ".pretrain" in m or m.startswith(("domix.engine.loop", "domix.finetune", "domix.llm"))}
        assert not bad, f"{layer} imports {bad}"


def test_method_names_are_compared_only_inside_the_methods():
    names = sorted(set(STAGE1) | set(STAGE2) | set(COMPARE), key=len, reverse=True)
    compared = re.compile(r"""(==|!=|\bin\b)\s*[(\[{]?\s*["'](%s)["']""" % "|".join(names))
    outside = [f"{p.relative_to(SRC)}:{i}: {line.strip()}" for p in SRC.rglob("*.py") if "methods" not in p.relative_to(SRC).parts
               for i, line in enumerate(p.read_text().splitlines(), 1) if compared.search(line)]
    assert outside == []
