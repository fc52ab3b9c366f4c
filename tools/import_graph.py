"""The import graph of src/domix: its size, depth and the edges between folders (tests/test_architecture.py checks it).

    python tools/import_graph.py          modules, imports, levels, folder edges
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

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


def folder_of(module: str) -> str:
    """The folder (subpackage) a module belongs to, or the module itself at the top."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or Path(SRC, *parts[1:], "__init__.py").is_file() else module


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    folders: dict[str, set[str]] = {}
    for module, imports in graph.items():
        folders.setdefault(folder_of(module), set()).update(folder_of(d) for d in imports if folder_of(d) != folder_of(module))
    return folders


def levels(graph: dict[str, set[str]]) -> int:
    """The longest chain of imports, in modules (a graph with a cycle has none)."""

    @functools.lru_cache(None)
    def depth(module: str) -> int:
        return 1 + max((depth(d) for d in graph[module]), default=0)

    return max(depth(m) for m in graph)


def main() -> None:
    graph = import_graph()
    cycle = find_cycle(graph)
    print(f"modules {len(graph)}, imports {sum(map(len, graph.values()))}, "
          + (f"a cycle: {' -> '.join(cycle)}" if cycle else f"levels {levels(graph)}"))
    folders = folder_graph(graph)
    print(f"folders {len(folders)}, edges between them {sum(map(len, folders.values()))}, "
          f"cycle between folders: {' -> '.join(find_cycle(folders) or []) or 'none'}")
    for folder in sorted(folders):
        print(f"  {folder} -> {', '.join(sorted(folders[folder])) or '-'}")


if __name__ == "__main__":
    main()
