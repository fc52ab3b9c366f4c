"""Retention: how much general language ability a model keeps after adaptation.

A task model's backbone (with whatever a method put inside it: LoRA layers, bridges, MixDA
adapters and gates, MoDE experts, or weights that full fine-tuning changed) is put under the
base checkpoint's own language-model head (a head tied to the input embeddings reads the task
backbone's embeddings, as the tied LM of that backbone would), and its LM loss on general-domain text is compared
with the base model's on the same sequences and masks. A method that leaves the backbone
alone keeps the base's loss exactly; the rise is what adaptation cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from domix.base_model import load_base_model, load_tokenizer
from domix.corpus import read_corpus, tokenize_blocks
from domix.engine.loop import evaluate


def general_blocks(path: str, tokenizer, objective: str, seq_len: int, max_blocks: int, seed: int = 0) -> torch.Tensor:
    """A seeded sample of at most ``max_blocks`` sequences of ``seq_len`` tokens of the general corpus."""
    blocks = tokenize_blocks(read_corpus("general", path), tokenizer, seq_len, append_eos=objective == "clm")
    keep = torch.arange(len(blocks))
    if len(blocks) > max_blocks:
        keep = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))[:max_blocks].sort().values
    return blocks[keep]


def backbone(model: nn.Module) -> nn.Module:
    """The transformer under a task head (``model.model`` for Llama, ``model.bert`` for BERT), through PEFT's wrapper."""
    if hasattr(model, "get_base_model"):  # a PeftModel: its LoRA layers live inside the backbone
        model = model.get_base_model()
    return getattr(model, model.base_model_prefix)


@dataclass(frozen=True)
class LMEval:
    """How retention scores the LM loss (engine.loop.evaluate): its masks' seed and share (an encoder's masked LM),
    fixed here, apart from domix pretrain's settings, so that retention figures of every run compare."""

    batch_size: int
    seed: int = 42
    mlm_probability: float = 0.15


def retention(task_model: nn.Module, base_name: str, general: str, seq_len: int, max_blocks: int,
              batch_size: int, device: torch.device | str) -> dict:
    """LM loss on general text of the base model and of ``task_model``'s backbone under the base's LM head."""
    started = time.perf_counter()
    tokenizer, objective = load_tokenizer(base_name)
    blocks = general_blocks(general, tokenizer, objective, seq_len, max_blocks)
    dtype = next(task_model.parameters()).dtype
    lm = load_base_model(base_name, objective, dtype, tokenizer).model.to(device)
    settings = LMEval(batch_size=batch_size)
    before = evaluate(lm, blocks, objective, tokenizer, settings, device)
    prefix, head = lm.base_model_prefix, lm.get_output_embeddings()
    base_backbone, base_head_weight = getattr(lm, prefix), head.weight
    task_backbone = backbone(task_model)
    setattr(lm, prefix, task_backbone)
    if head.weight is base_backbone.get_input_embeddings().weight:  # a tied head reads the embeddings it sits on
        head.weight = task_backbone.get_input_embeddings().weight
    try:
        after = evaluate(lm, blocks, objective, tokenizer, settings, device)
    finally:
        setattr(lm, prefix, base_backbone)
        head.weight = base_head_weight
    return {"corpus": general, "sequences": int(blocks.shape[0]), "seq_len": seq_len, "objective": objective,
            "lm_loss_base": round(before, 6), "lm_loss_after": round(after, 6), "change": round(after - before, 6),
            "seconds": round(time.perf_counter() - started, 2)}
