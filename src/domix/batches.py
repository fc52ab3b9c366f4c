"""Language-model batches from token blocks: causal LM, and BERT-style masked LM.

Masking draws from an explicit generator, so a step's batch is a pure function of
(seed, step): runs resume exactly, and before/after evaluations see the same masks.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def causal_batch(blocks: torch.Tensor) -> dict[str, torch.Tensor]:
    # transformers shifts the labels inside the model.
    return {"input_ids": blocks, "labels": blocks.clone()}


def masked_batch(
    blocks: torch.Tensor, tokenizer, generator: torch.Generator, probability: float = 0.15
) -> dict[str, torch.Tensor]:
    """BERT masking: pick 15% of the non-special tokens; of those 80% [MASK], 10% random, 10% kept."""
    input_ids = blocks.clone()
    labels = blocks.clone()
    special = torch.isin(blocks, torch.tensor(tokenizer.all_special_ids, dtype=blocks.dtype))
    chosen = (torch.rand(blocks.shape, generator=generator) < probability) & ~special
    if not chosen.any():  # an all-ignored batch would give a NaN loss
        candidates = (~special).nonzero()
        if len(candidates):
            pick = candidates[torch.randint(len(candidates), (1,), generator=generator)][0]
            chosen[pick[0], pick[1]] = True
    labels[~chosen] = IGNORE_INDEX
    draw = torch.rand(blocks.shape, generator=generator)
    to_mask = chosen & (draw < 0.8)
    to_random = chosen & (draw >= 0.8) & (draw < 0.9)
    input_ids[to_mask] = tokenizer.mask_token_id
    random_ids = torch.randint(len(tokenizer), blocks.shape, generator=generator, dtype=blocks.dtype)
    input_ids[to_random] = random_ids[to_random]
    return {"input_ids": input_ids, "labels": labels}


def lm_batch(
    blocks: torch.Tensor, objective: str, tokenizer, generator: torch.Generator, mlm_probability: float = 0.15
) -> dict[str, torch.Tensor]:
    if objective == "mlm":
        return masked_batch(blocks, tokenizer, generator, mlm_probability)
    return causal_batch(blocks)

