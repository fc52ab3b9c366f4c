"""The layout's rules, checked on the source: no import cycles, method names only in the registry's reach."""

import importlib.util
import re
import sys
from pathlib import Path

from domix.methods.registry import COMPARE, STAGE1, STAGE2

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "domix"
SPEC = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
graph_tool = sys.modules[SPEC.name] = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(graph_tool)
import_graph, find_cycle, folder_of = graph_tool.import_graph, graph_tool.find_cycle, graph_tool.folder_of


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_even_through_imports_inside_functions():
    graph = import_graph()
    assert "domix.finetuning.run" in graph and "domix.methods.registry" in graph["domix.finetuning.config"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_layers_do_not_import_trainers():
    """A layer (what a model is made of) never imports a training loop or a recipe."""
    graph = import_graph()
    layers = [m for m in graph if m.endswith(".layer")]
    assert layers
    for layer in layers:
        bad = {m for m in graph[layer] if ".pretrain" in m or m.startswith(("domix.engine.loop", "domix.finetuning", "domix.llm"))}
        assert not bad, f"{layer} imports {bad}"


def test_method_names_are_compared_only_inside_the_methods():
    names = sorted(set(STAGE1) | set(STAGE2) | set(COMPARE), key=len, reverse=True)
    alternatives = "|".join(names)
    # a name on the right of ==, != or in (a tuple of names too), or on their left: "mixda" in manifest
    compared = re.compile(r"""(==|!=|\bin\b)\s*[(\[{]?\s*["'](%s)["']|["'](%s)["']\s*(==|!=|\bin\b|\bnot in\b)""" % (alternatives, alternatives))
    outside = [f"{p.relative_to(SRC)}:{i}: {line.strip()}" for p in SRC.rglob("*.py") if "methods" not in p.relative_to(SRC).parts
               for i, line in enumerate(p.read_text().splitlines(), 1) if compared.search(line)]
    assert outside == []


# The layers of src/domix, bottom to top: a module imports its own layer's modules or lower ones, never higher.
LAYERS = [
    ("errors", "lazy", "version", "console", "system", "atomic", "settings", "layout"),  # foundations: no torch, no domix above them
    ("sources", "tokens", "tasks", "corpus", "batches", "metrics", "base_model", "store", "lm_loss", "model_card"),  # data, models
    ("engine", "retention"),  # the training loop, run folders, what every recipe measures
    ("methods",),  # each method's layers, models and trainers; the registry
    ("pretraining", "finetuning", "llm"),  # the recipes
    ("comparison", "api"),  # what runs recipes
    ("cli", "__main__", ""),  # the command line and the package's lazy names
]


def layer_of(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    found = [i for i, names in enumerate(LAYERS) if part in names]
    assert found, f"{module} is in no layer: add its folder to LAYERS"
    return found[0]


def test_no_import_goes_up_the_layers():
    graph = import_graph()
    up = [f"{m} -> {d}" for m, deps in graph.items() for d in deps if layer_of(d) > layer_of(m)]
    assert up == []


def test_no_cycle_between_folders_either():
    """Two folders never import each other, even through modules that do not import each other."""
    folders = graph_tool.folder_graph(import_graph())
    assert "domix.methods" in folders["domix.pretraining"]  # the recipe reads the registry: an edge the graph must see
    assert find_cycle({k: v & set(folders) for k, v in folders.items()}) is None
    assert find_cycle({"domix.methods": {"domix.pretraining"}, "domix.pretraining": {"domix.methods"}}) is not None
