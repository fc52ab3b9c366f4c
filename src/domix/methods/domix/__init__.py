"""DoMIX stage 2: domain modules concatenated with a trainable bridge (docs/methods.md §1)."""

import importlib

from domix.methods.domix.config import BridgeConfig

__all__ = ["BridgeConfig", "BridgedLinear", "compose", "fold"]
_LAZY = {"BridgedLinear": "domix.methods.domix.layer", "compose": "domix.methods.domix.model", "fold": "domix.methods.domix.model"}


def __getattr__(name: str):  # the layer and model need torch: load them when first asked for, not with the settings
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'domix.methods.domix' has no attribute {name!r}")
