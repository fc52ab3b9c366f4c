"""Where MixDA's adapters go and how big they are.

Layer rule: two blocks by default, at the reference's relative depth: it adapts blocks 7 and 11 (0 = the
first) of RoBERTa-large's 24, so for L blocks floor(7L/24 + 1/2) and floor(11L/24 + 1/2) (blocks 9 and 14
of SmolLM2-135M's 30, 4 and 6 of a 12-block model). ``--mixda-layers`` names others. An adapter's
bottleneck is d_ff / reduction (16).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from domix.errors import DomixError
from domix.settings import check, setting

REDUCTION = 16  # bottleneck d_ff / 16 (domain adapters) and d_model / 16 (the task adapter)
LM_WEIGHT = 0.5  # stage 1: 0.5 x the language-model loss + the retention MSE on general text
KIND = "domix-mixda-adapter"  # a stage-1 domain folder's manifest kind


def describe_adapters(manifest: dict) -> str:
    """What one domain's folder of a MixDA store holds (domix modules)."""
    a = manifest["mixda"]
    return f"MixDA adapters at blocks {a['layers']}, bottleneck {a['adapter']}"
WEIGHTS_FILE = "mixda_adapter.safetensors"


def parse_layers(text: str) -> list[int]:
    """``"7,11"`` -> [7, 11]."""
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DomixError(f"--mixda-layers takes comma-separated block indices such as 7,11, not {text!r}") from None
    if not layers:
        raise DomixError("--mixda-layers names no block; give indices such as 7,11")
    return layers


REFERENCE_LAYERS, REFERENCE_DEPTH = (7, 11), 24  # the published runs: RoBERTa-large, --layers 7,11


def default_layers(n_blocks: int) -> list[int]:
    """The reference's blocks at the same relative depth (one block if they coincide)."""
    return sorted({min(math.floor(i * n_blocks / REFERENCE_DEPTH + 0.5), n_blocks - 1) for i in REFERENCE_LAYERS})


def choose_layers(n_blocks: int, chosen: list[int] | None) -> list[int]:
    """The adapted block indices, sorted; refuses indices the model does not have."""
    if chosen is None:
        return default_layers(n_blocks)
    outside = [i for i in chosen if not 0 <= i < n_blocks]
    if outside:
        raise DomixError(f"--mixda-layers {outside} do not exist: this model has {n_blocks} blocks (0 to {n_blocks - 1})")
    return sorted(chosen)


def bottleneck(width: int, reduction: int) -> int:
    return max(width // reduction, 1)


@dataclass(kw_only=True)
class MixdaSettings:
    """MixDA's stage-1 settings (domix pretrain --method mixda): where its domain adapters go, how big they are."""

    mixda_layers: list[int] | None = setting(None, "mixda: comma-separated block indices to adapt, 0 = the first (default: the "
                                                   "published blocks 7,11 of RoBERTa-large's 24 at the same relative depth, "
                                                   "e.g. 9,14 of SmolLM2's 30)")
    mixda_reduction: int = setting(REDUCTION, "mixda: domain adapter bottleneck = FFN width / this", int)

    TEXT_FORMS = {"mixda_layers": lambda text: parse_layers(str(text))}  # "7,11" from a flag, 7 from YAML

    def check_settings(self, run) -> None:
        """Refuse values MixDA cannot train with (``run``: the run's settings)."""
        check([
            (self.mixda_reduction >= 1, "--mixda-reduction must be at least 1"),
            (self.mixda_layers is None or (isinstance(self.mixda_layers, list) and len(self.mixda_layers) > 0
                                           and all(isinstance(i, int) and i >= 0 for i in self.mixda_layers)
                                           and len(set(self.mixda_layers)) == len(self.mixda_layers)),
             f"--mixda-layers must list distinct block indices (0 = the first block), e.g. 7,11; got {self.mixda_layers!r}"),
        ])
