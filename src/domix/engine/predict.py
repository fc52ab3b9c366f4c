"""Running a classifier over tokenized task examples, in batches, without gradients."""

from __future__ import annotations

import torch
from torch import nn

from domix.tasks import pad_batch


@torch.no_grad()
def predict(model: nn.Module, rows: list[list[int]], pad_id: int, batch_size: int, device) -> torch.Tensor:
    """Logits for tokenized examples, in order."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(rows), batch_size):
        batch = pad_batch(rows[start : start + batch_size], pad_id)
        out.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu())
    model.train(was_training)
    return torch.cat(out)
