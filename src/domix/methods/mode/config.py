"""MoDE's architecture settings (docs/methods.md §3): how the backbone is cut into blocks, how big an expert is.

Defaults: blocks of 6 layers, and the paper's expert: a copy of the whole block, so each domain's
experts start equal to the backbone (a domain adds as many layers as the backbone has) and the
stage-1 gates start even (any mix of equal branches is the base). ``expert_layers`` below the block
size is a cheaper expert, a copy of the block's last layers fed the block's input: it starts as another
function, so its gates start at ``BACKBONE_PRIOR_PARTIAL`` (0.99) on the backbone, or the model starts far
from the base (SmolLM2, 1-layer experts at an even mix: LM loss 3.9 -> 23). ``mode_backbone_prior``
sets the start either way. Stage-2 gates start from the stage-1 ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from domix.errors import DomixError
from domix.settings import setting

KIND = "domix-mode-experts"  # a stage-1 domain folder's manifest kind


def describe_experts(manifest: dict) -> str:
    """What one domain's folder of a MoDE store holds (domix modules)."""
    e = manifest["mode"]
    spans = ", ".join(f"{b['layers'][0]}-{b['layers'][-1]}" for b in e["blocks"])
    return (f"MoDE experts beside the blocks of layers {spans}, {e['expert_layers']} layer(s) each "
            f"({e['expert_parameters']:,} parameters)")

DEFAULT_BLOCK_SIZE = 6
DEFAULT_EXPERT_LAYERS = None  # the block size: full copies
BACKBONE_PRIOR_FULL = 0.5  # full copies: an even start (the branches are equal at first)
BACKBONE_PRIOR_PARTIAL = 0.99  # fewer layers: start on the backbone


def expert_layers_of(block_size: int, expert_layers: int | None) -> int:
    return block_size if expert_layers is None else expert_layers


def backbone_prior_of(block_size: int, expert_layers: int | None, prior: float | None) -> float:
    """The stage-1 gates' starting weight on the backbone: as given, else by the experts' size."""
    if prior is not None:
        return prior
    return BACKBONE_PRIOR_FULL if expert_layers_of(block_size, expert_layers) >= block_size else BACKBONE_PRIOR_PARTIAL


@dataclass(frozen=True)
class BlockPlan:
    """One block of consecutive backbone layers and the layers its experts are copied from."""

    index: int  # the block's number (0 = the first ``block_size`` layers)
    layers: tuple[int, ...]  # the backbone layers the block runs
    source_layers: tuple[int, ...]  # the backbone layers an expert of this block starts as (the block's last ones)

    def to_dict(self) -> dict:
        return {"index": self.index, "layers": list(self.layers), "source_layers": list(self.source_layers)}

    @classmethod
    def from_dict(cls, d: dict) -> "BlockPlan":
        return cls(int(d["index"]), tuple(d["layers"]), tuple(d["source_layers"]))


def plan_blocks(n_layers: int, block_size: int = DEFAULT_BLOCK_SIZE, expert_layers: int | None = DEFAULT_EXPERT_LAYERS,
                blocks: list[int] | None = None) -> list[BlockPlan]:
    """The blocks that get experts: ``n_layers`` cut into runs of ``block_size`` (the last may be shorter).

    ``blocks`` picks some of them by number (default: all). An expert has ``expert_layers`` layers
    (at most the block's length; None: all of them), copied from the block's last layers.
    """
    check_settings(block_size, expert_layers, blocks)
    expert_layers = expert_layers_of(block_size, expert_layers)
    starts = list(range(0, n_layers, block_size))
    chosen = list(range(len(starts))) if blocks is None else sorted(blocks)
    beyond = [b for b in chosen if b >= len(starts)]
    if beyond:
        raise DomixError(f"--mode-blocks {beyond} do not exist: {n_layers} layers in blocks of {block_size} make "
                         f"blocks 0..{len(starts) - 1}; choose among those")
    plans = []
    for b in chosen:
        layers = tuple(range(starts[b], min(starts[b] + block_size, n_layers)))
        plans.append(BlockPlan(b, layers, layers[-min(expert_layers, len(layers)):]))
    return plans


def check_settings(block_size: int, expert_layers: int | None, blocks: list[int] | None) -> None:
    if not isinstance(block_size, int) or block_size < 1:
        raise DomixError(f"--mode-block-size must be a whole number of at least 1, not {block_size!r}")
    if expert_layers is not None and (not isinstance(expert_layers, int) or not 1 <= expert_layers <= block_size):
        raise DomixError(f"--mode-expert-layers must be between 1 and the block size {block_size}, not {expert_layers!r}")
    if blocks is not None:
        if not blocks or not all(isinstance(b, int) and b >= 0 for b in blocks) or len(set(blocks)) != len(blocks):
            raise DomixError(f"--mode-blocks must list distinct block numbers (0, 1, ...), not {blocks!r}")


def check_device_map(device_map: dict | None) -> None:
    """A placement: {"backbone": DEVICE, "experts": DEVICE, DOMAIN: DEVICE}, every key optional."""
    if device_map is None:
        return
    if not isinstance(device_map, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in device_map.items()):
        raise DomixError(f"--mode-device-map must map names to devices (backbone=cuda:0,experts=cuda:1 or DOMAIN=cuda:2), "
                         f"not {device_map!r}")
    import torch

    for key, value in device_map.items():
        try:
            torch.device(value)
        except RuntimeError:
            raise DomixError(f"--mode-device-map gives {key!r} the unknown device {value!r}; use cpu, cuda or cuda:N") from None


def parse_device_map(text: str) -> dict[str, str]:
    """``backbone=cuda:0,experts=cuda:1`` (the command line's form) as a mapping."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise DomixError(f"--mode-device-map expects NAME=DEVICE items separated by commas, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def parse_blocks(text: str | int) -> list[int]:
    """``"0,2"`` (or one number) -> [0, 2]."""
    try:
        return [int(b) for b in str(text).split(",") if b.strip()]
    except ValueError:
        raise DomixError(f"--mode-blocks must list block numbers separated by commas (e.g. 0,2), not {text!r}") from None


def _read_device_map(value) -> dict[str, str] | None:
    """A device map from a flag's text (backbone=cuda:0,experts=cuda:1) or YAML's mapping, checked."""
    device_map = parse_device_map(value) if isinstance(value, str) else value
    check_device_map(device_map)
    return device_map


@dataclass(kw_only=True)
class ModePretrainSettings:
    """MoDE's stage-1 settings (domix pretrain --method mode): how the backbone is cut into blocks, how big an expert is."""

    mode_block_size: int = setting(DEFAULT_BLOCK_SIZE, "mode: consecutive backbone layers per block", int)
    mode_expert_layers: int | None = setting(DEFAULT_EXPERT_LAYERS, "mode: layers of a domain's expert per block, copies of the "
                                             "block's last ones (default: the block size, the paper's full copies; fewer is cheaper)", int)
    mode_blocks: list[int] | None = setting(None, "mode: comma-separated block numbers that get experts, 0 = the first (default: all)")
    mode_backbone_prior: float | None = setting(None, "mode: the gates' starting weight on the backbone (default 0.5 for whole-block "
                                                      "experts, 0.99 for fewer layers)", float)
    mode_device_map: dict[str, str] | None = setting(None, "mode: where experts run, e.g. experts=cuda:1 or bio=cuda:1,law=cuda:2 "
                                                           "(backbone=DEVICE moves the rest; default: all on --device)")

    # a flag's text: "0,2" (or 2 from YAML); "backbone=cuda:0,experts=cuda:1"
    TEXT_FORMS = {"mode_blocks": lambda text: parse_blocks(text), "mode_device_map": lambda text: parse_device_map(str(text))}

    def check_settings(self, run) -> None:
        """Refuse values MoDE's stage 1 cannot train with (``run``: the run's settings)."""
        self.mode_device_map = _read_device_map(self.mode_device_map)
        check_settings(self.mode_block_size, self.mode_expert_layers, self.mode_blocks)
        if self.mode_backbone_prior is not None and not 0 < self.mode_backbone_prior < 1:
            raise DomixError(f"--mode-backbone-prior must be between 0 and 1 (exclusive), not {self.mode_backbone_prior!r}")


@dataclass(kw_only=True)
class ModeFinetuneSettings:
    """MoDE's stage-2 settings (domix finetune and domix instruct --method mode): the gates (and a classifier's head)
    train; the experts too on request."""

    mode_train_experts: bool = setting(False, "mode: train the domain experts too, not only the gates and the head")
    mode_gate_lr: float | None = setting(None, "mode: learning rate of the gates (default: --lr)", float)
    mode_device_map: dict[str, str] | None = setting(None, "mode: where experts run, e.g. experts=cuda:1 (as in pretrain)")

    TEXT_FORMS = {"mode_device_map": lambda text: parse_device_map(str(text))}

    def check_settings(self, run) -> None:
        """Refuse values MoDE's stage 2 cannot train with, and LoRA adapters given to it (``run``: the run's settings)."""
        self.mode_device_map = _read_device_map(self.mode_device_map)
        if self.mode_gate_lr is not None and not self.mode_gate_lr > 0:
            raise DomixError(f"--mode-gate-lr must be positive, not {self.mode_gate_lr!r}")
        if getattr(run, "adapters", None):
            raise DomixError("--adapter gives LoRA adapters, which MoDE does not compose; give its experts with --modules STORE "
                             "(the --out folder of domix pretrain --method mode)")
