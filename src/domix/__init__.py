"""domix: modular domain adaptation of pretrained language models (DoMIX, MixDA, MoDE)."""

__version__ = "0.1.0"

from domix.errors import DomixError  # noqa: E402

__all__ = ["DomixError", "__version__"]
