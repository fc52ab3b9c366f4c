"""Classification metrics (accuracy, macro-F1, micro-F1) and loss curves for records."""

from __future__ import annotations

import torch


def classification_scores(predictions: torch.Tensor, labels: torch.Tensor, num_labels: int) -> dict[str, float]:
    """Accuracy, macro-F1 over the labels that occur in gold or predictions, and micro-F1.

    For single-label classification micro-F1 equals accuracy; both are reported because
    papers name one or the other (ChemProt's "micro-F1" is accuracy).
    """
    predictions, labels = predictions.long().cpu(), labels.long().cpu()
    f1s = []
    for c in range(num_labels):
        tp = int(((predictions == c) & (labels == c)).sum())
        fp = int(((predictions == c) & (labels != c)).sum())
        fn = int(((predictions != c) & (labels == c)).sum())
        if tp + fp + fn == 0:
            continue  # the class occurs nowhere: it has no F1
        f1s.append(2 * tp / (2 * tp + fp + fn))
    accuracy = float((predictions == labels).double().mean()) if len(labels) else 0.0
    return {"accuracy": accuracy, "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0, "micro_f1": accuracy}


def majority_scores(labels: dict[str, torch.Tensor], num_labels: int) -> dict:
    """The scores of always answering the training set's most frequent label: what learning nothing gets (on the
    held-out splits ``labels`` has)."""
    label = int(torch.bincount(labels["train"], minlength=num_labels).argmax())
    return {"label": label, **{split: classification_scores(torch.full_like(labels[split], label), labels[split], num_labels)
                               for split in labels if split != "train"}}


def downsample_curve(values: list[float], points: int) -> list[list[float]]:
    """[step, mean loss] over at most ``points`` equal windows of the steps (a loss curve for a record)."""
    if not values:
        return []
    width = max(1, -(-len(values) // points))
    # 6 significant digits, not decimals: a small term (a retention MSE of 1e-6) keeps its value
    return [[min(i + width, len(values)), float(f"{sum(values[i : i + width]) / len(values[i : i + width]):.6g}")]
            for i in range(0, len(values), width)]
