"""DoMIX stage 2: domain modules concatenated with a trainable bridge (docs/methods.md §1)."""

from domix.methods.domix.config import BridgeConfig
from domix.methods.domix.layer import BridgedLinear
from domix.methods.domix.model import compose, fold

__all__ = ["BridgeConfig", "BridgedLinear", "compose", "fold"]
