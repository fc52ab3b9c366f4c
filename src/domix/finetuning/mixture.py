"""Several tasks trained at once (``--mix-task``), as MoDE's stage 2 trains its gates on mixed target data.

The tasks share everything the method trains (gates, bridges, adapters) and one classification head over
all their labels: the run's own task's labels first, then each mixed task's as ``task:label``. An example
is scored only against its own task's labels (the others' logits masked out), which is a head per task:
a linear head's rows are independent. The training examples of all tasks are shuffled together, so each
task is sampled in proportion to its size. Dev selection takes the mean of the tasks' dev scores; the
saved task model keeps the run's own task's rows of the head, so it is an ordinary model of that task.
A run without mixed tasks is a mixture of one, and trains exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from domix.metrics import classification_scores
from domix.tasks import Task, encode


@dataclass
class Mixture:
    tasks: list[Task]  # the run's own task first

    @property
    def labels(self) -> list[str]:
        """The joint head's labels."""
        own, *mixed = self.tasks
        return own.labels + [f"{t.name}:{label}" for t in mixed for label in t.labels]

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Each task's rows of the joint head (start, end)."""
        out, start = [], 0
        for task in self.tasks:
            out.append((start, start + len(task.labels)))
            start += len(task.labels)
        return out

    def train_set(self, tokenizer, max_length: int) -> tuple[list[list[int]], torch.Tensor, torch.Tensor]:
        """Every task's training examples in one list: token ids, joint label ids, and each example's task."""
        rows, labels, owner = [], [], []
        for k, (task, (start, _)) in enumerate(zip(self.tasks, self.spans)):
            rows += encode(task.splits["train"], tokenizer, max_length)
            labels.append(task.label_ids("train") + start)
            owner += [k] * len(task.splits["train"].texts)
        return rows, torch.cat(labels), torch.tensor(owner)

    def mask(self, owner: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(examples, joint labels): 0 on an example's own task's labels, -inf elsewhere."""
        allowed = torch.zeros(len(self.tasks), len(self.labels), dtype=torch.bool)
        for k, (start, end) in enumerate(self.spans):
            allowed[k, start:end] = True
        return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, float("-inf"))[owner]

    def predictions(self, logits: torch.Tensor, k: int) -> torch.Tensor:
        """Task ``k``'s predicted label ids (its own labels' index) from its examples' joint logits."""
        start, end = self.spans[k]
        return logits[:, start:end].argmax(-1)

    def scores(self, logits: list[torch.Tensor], split: str) -> list[dict]:
        """Each task's scores on ``split`` from its examples' joint logits, read on its own labels only."""
        return [classification_scores(self.predictions(task_logits, k), task.label_ids(split), len(task.labels))
                for k, (task, task_logits) in enumerate(zip(self.tasks, logits))]


@torch.no_grad()
def keep_own_rows(model: torch.nn.Module, head: list[str], labels: list[str]) -> None:
    """Cut the joint head down to the run's own task's rows (its ``labels`` come first), in place."""
    joint = model.config.num_labels
    params = dict(model.named_parameters())
    for name in head:
        param = params[name]
        if param.shape[0] != joint:  # not the layer that outputs the labels (a BERT pooler)
            continue
        module_name, attr = name.rsplit(".", 1)
        module = model.get_submodule(module_name)
        setattr(module, attr, torch.nn.Parameter(param[: len(labels)].clone(), requires_grad=param.requires_grad))
        if hasattr(module, "out_features"):
            module.out_features = len(labels)
    model.config.num_labels = len(labels)
    model.config.id2label, model.config.label2id = dict(enumerate(labels)), {label: i for i, label in enumerate(labels)}
