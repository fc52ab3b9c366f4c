"""DoMIX stage 2: domain modules concatenated with a trainable bridge (docs/methods.md §1)."""

from domix.lazy import lazy_attributes
from domix.methods.domix.config import BridgeConfig

__all__ = ["BridgeConfig", "BridgedLinear", "compose", "fold"]
__getattr__ = lazy_attributes(__name__, {"BridgedLinear": "domix.methods.domix.layer", "compose": "domix.methods.domix.model",
                                         "fold": "domix.methods.domix.model"})
