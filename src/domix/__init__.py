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

from typing import TYPE_CHECKING

from domix.errors import DomixError
from domix.lazy import lazy_attributes
from domix.version import __version__

# public name -> the module that defines it (imported on first use: PEP 562)
_EXPORTS = {
    "PretrainConfig": "domix.pretraining.config",
    "FinetuneConfig": "domix.finetuning.config",
    "InstructConfig": "domix.llm.config",
    "CompareConfig": "domix.comparison.config",
    "BridgeConfig": "domix.methods.bridge.config",
    "pretrain": "domix.pretraining.run",
    "finetune": "domix.finetuning.run",
    "instruct": "domix.llm.train",
    "compare": "domix.comparison.run",
    "load_store": "domix.store",
    "DomainModule": "domix.store",
    "compose": "domix.methods.bridge.model",
    "fold": "domix.methods.bridge.model",
    "export": "domix.api",
    "evaluate": "domix.api",
}

__all__ = ["DomixError", "__version__", *_EXPORTS]


__getattr__ = lazy_attributes(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from domix.api import evaluate, export
    from domix.comparison.config import CompareConfig
    from domix.comparison.run import compare
    from domix.finetuning.config import FinetuneConfig
    from domix.finetuning.run import finetune
    from domix.llm.config import InstructConfig
    from domix.llm.train import instruct
    from domix.methods.bridge.config import BridgeConfig
    from domix.methods.bridge.model import compose, fold
    from domix.pretraining.config import PretrainConfig
    from domix.pretraining.run import pretrain
    from domix.store import DomainModule, load_store
