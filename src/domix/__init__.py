"""domix: modular domain adaptation of pretrained language models (DoMIX, MixDA, MoDE).

The library in a few names, as the commands use them::

    from domix import PretrainConfig, FinetuneConfig, pretrain, finetune, export, evaluate

    pretrain(PretrainConfig(model="roberta-base", domains={"bio": "pubmed.txt"}, out="modules"))
    finetune(FinetuneConfig(modules="modules", task="tasks/chemprot", out="runs/chemprot"))
    export("runs/chemprot/model", "chemprot-plain")          # a plain transformers folder
    evaluate("chemprot-plain", "tasks/chemprot/test.jsonl")   # {'accuracy': ..., 'macro_f1': ...}

Importing domix is cheap: torch and transformers load when a function first needs them.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

from domix.errors import DomixError
from domix.lazy import lazy_attributes
from domix.version import __version__

# public name -> the module that defines it (imported on first use: PEP 562)
_EXPORTS = {
    "PretrainConfig": "domix.pretrain.config",
    "FinetuneConfig": "domix.finetune.config",
    "InstructConfig": "domix.llm.config",
    "CompareConfig": "domix.compare.config",
    "BridgeConfig": "domix.methods.domix.config",
    "pretrain": "domix.pretrain.run",
    "finetune": "domix.finetune.run",
    "instruct": "domix.llm.train",
    "compare": "domix.compare.run",
    "load_store": "domix.store",
    "DomainModule": "domix.store",
    "compose": "domix.methods.domix.model",
    "fold": "domix.methods.domix.model",
    "export": "domix.api",
    "evaluate": "domix.api",
}

__all__ = ["DomixError", "__version__", *_EXPORTS]


__getattr__ = lazy_attributes(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted(__all__)


class _Package(types.ModuleType):
    """domix itself. pretrain, finetune and compare are functions here and subpackages too: importing a
    subpackage (domix.finetune.config, say) makes Python bind it on its parent, which would hide the
    function of that name. The binding is skipped, so ``domix.finetune`` is always the function (import
    the subpackages' contents with ``from domix.finetune.config import ...``)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from domix.api import evaluate, export
    from domix.compare.config import CompareConfig
    from domix.compare.run import compare
    from domix.finetune.config import FinetuneConfig
    from domix.finetune.run import finetune
    from domix.llm.config import InstructConfig
    from domix.llm.train import instruct
    from domix.methods.domix.config import BridgeConfig
    from domix.methods.domix.model import compose, fold
    from domix.pretrain.config import PretrainConfig
    from domix.pretrain.run import pretrain
    from domix.store import DomainModule, load_store
