"""A labelled task (a classification folder, as ``domix finetune`` reads) as instructions for a causal LM, scored by
its label words (``domix instruct --task FOLDER``).

Each example becomes an instruction that lists the task's labels, the example's text (and its text pair, on the
next line) as the input, and its label as the response: the label word itself, as training teaches it (then the
end of text). A model answers in two ways, both scored:

- **loglikelihood**: every label's response scored given the example's prompt, the summed log-probability of its
  tokens (the end of text included, so a label that is the start of another is not favoured); the most probable
  label is the prediction. Every example gets one, so accuracy and macro-F1 compare with a classifier's.
- **generate**: greedy decoding from the prompt; the prediction is the label the output equals once trimmed
  (case-sensitive), and an output that is no label is no answer (wrong; counted as ``unanswered``).

The input is cut (from its end, in tokens) where prompt and the longest label would pass ``max_length``, so every
label is scored whole; the labels' order is the task's (sorted), the index a classifier would give.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from domix.batches import IGNORE_INDEX
from domix.errors import DomixError
from domix.llm.data import Example, encode_example, prompt_text
from domix.metrics import classification_scores
from domix.tasks import Split, Task, read_task, subsample

DEFAULT_INSTRUCTION = "Classify the input. Answer with exactly one of these labels: {labels}."


@dataclass
class LabelledTask:
    """A labelled task's splits as instructions: the examples and their gold label ids, per split."""

    task: Task
    examples: dict[str, list[Example]]
    gold: dict[str, torch.Tensor]

    @property
    def labels(self) -> list[str]:
        return self.task.labels

    def fit(self, tokenizer, template: str, max_length: int) -> None:
        """Cut every example's input so that its prompt and the longest label fit ``max_length`` tokens (:func:`fitted`),
        once: training, dev and test scoring then encode the examples as they are."""
        self.examples = {split: [fitted(e, self.labels, tokenizer, template, max_length) for e in examples]
                         for split, examples in self.examples.items()}


def read_labelled(path: str, instruction: str | None, train_limit: int | None, eval_limit: int | None, sample_seed: int,
                  score_test: bool, train_skip: int = 0) -> LabelledTask:
    """The task at ``path``: seeded samples of ``train_limit`` training examples (after the first ``train_skip`` of the
    seeded order) and ``eval_limit`` dev and test examples (as ``domix finetune`` draws them), as instructions; without
    ``score_test`` the test split is not read at all."""
    task = read_task(path, without_test=not score_test)
    subsample(task, "train", train_limit, sample_seed, train_skip)
    for split in list(task.splits)[1:]:
        subsample(task, split, eval_limit, sample_seed)
    return LabelledTask(task, {name: split_examples(s, task.labels, instruction) for name, s in task.splits.items()},
                        {name: task.label_ids(name) for name in task.splits})


def instruction_text(labels: list[str], instruction: str | None = None) -> str:
    """The instruction every example of the task gets (``instruction`` may name ``{labels}``)."""
    return (instruction or DEFAULT_INSTRUCTION).replace("{labels}", ", ".join(labels))


def split_examples(split: Split, labels: list[str], instruction: str | None = None) -> list[Example]:
    """The split's examples as instructions, each with its gold label as the output."""
    text = instruction_text(labels, instruction)
    pairs = split.pairs or [None] * len(split.texts)
    return [Example(text, f"{t}\n{p}" if p is not None else t, label) for t, p, label in zip(split.texts, pairs, split.labels)]


def fitted(example: Example, labels: list[str], tokenizer, template: str, max_length: int) -> Example:
    """``example`` with its input cut so that the prompt and the longest label's response fit ``max_length`` tokens."""
    longest = max(labels, key=lambda label: len(tokenizer(label, add_special_tokens=False)["input_ids"]))
    for _ in range(4):  # a cut input may tokenize a token or two longer once decoded: cut again
        total = len(encode_example(Example(example.instruction, example.input, longest), tokenizer, template, 10**9)[0])
        if total <= max_length:
            return example
        input_ids = tokenizer(example.input, add_special_tokens=False)["input_ids"]
        keep = len(input_ids) - (total - max_length) - 1
        if keep <= 0:
            raise DomixError(f"the instruction and the label {longest!r} leave no room for an input in --max-length "
                             f"{max_length} tokens; raise --max-length")
        example = Example(example.instruction, tokenizer.decode(input_ids[:keep]), example.output)
    raise DomixError(f"an input could not be cut to fit --max-length {max_length}; raise --max-length")


def score_loglikelihood(model: nn.Module, tokenizer, examples: list[Example], labels: list[str], template: str, max_length: int,
                        device) -> torch.Tensor:
    """(examples, labels) summed log-probabilities of each label's response given each example's prompt; the examples fit
    ``max_length`` with every label (:meth:`LabelledTask.fit`), so no response is cut.

    The prompt runs once per example and its keys and values serve every label (``shared_prompt_scores``): with K labels
    a prompt of p tokens and responses of r, p + K·r tokens instead of K·(p + r). The responses are split off the
    tokenized whole example, so they are the tokens training predicts."""
    was_training = model.training
    model.eval()
    try:
        out = torch.empty(len(examples), len(labels), dtype=torch.float64)
        for i, example in enumerate(examples):
            rows = [encode_example(Example(example.instruction, example.input, label), tokenizer, template, max_length)
                    for label in labels]
            out[i] = torch.tensor(shared_prompt_scores(model, rows, tokenizer.pad_token_id, device))
        return out
    finally:
        model.train(was_training)


@torch.no_grad()
def shared_prompt_scores(model: nn.Module, rows: list[tuple[list[int], list[int]]], pad_id: int, device) -> list[float]:
    """The summed log-probability of each row's response (its labelled tokens) given its prompt, for rows that share one
    prompt: the prompt runs once with a key/value cache, the cache is repeated for the rows, and the responses (right-
    padded) run on it; the prompt's last logits score each response's first token."""
    start = min(labels.index(next(t for t in labels if t != IGNORE_INDEX)) for _, labels in rows)
    prompt = rows[0][0][:start]
    if any(ids[:start] != prompt for ids, _ in rows):
        raise ValueError("shared_prompt_scores needs rows that share their prompt")
    first = model(input_ids=torch.tensor([prompt], device=device), use_cache=True, logits_to_keep=1)  # the last position's alone
    cache, head = first.cache, torch.log_softmax(first.logits[0, -1].double(), dim=-1).cpu()
    cache.batch_repeat_interleave(len(rows))
    responses = [ids[start:] for ids, _ in rows]
    width = max(len(r) for r in responses)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), start + width), dtype=torch.long)
    mask[:, :start] = 1
    for k, response in enumerate(responses):
        ids[k, : len(response)] = torch.tensor(response)
        mask[k, start : start + len(response)] = 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), cache=cache, use_cache=True).logits
    logprobs = torch.log_softmax(logits.double(), dim=-1).cpu()  # position j predicts response token j + 1
    out = []
    for k, response in enumerate(responses):
        total = float(head[response[0]])
        total += sum(float(logprobs[k, j, token]) for j, token in enumerate(response[1:]))
        out.append(total)
    return out


def generated_labels(model: nn.Module, tokenizer, examples: list[Example], labels: list[str], template: str,
                     batch_size: int, device) -> tuple[list[int | None], list[str]]:
    """Each example's greedy answer (the examples fitted, :meth:`LabelledTask.fit`): the index of the label it equals
    once trimmed (None: no label), and the text."""
    from domix.llm.choice import generate

    longest = max(len(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels)
    prompts = [prompt_text(e.instruction, e.input, template, tokenizer) for e in examples]
    was_training = model.training
    try:
        texts = generate(model, tokenizer, prompts, max_new_tokens=longest + 2, batch_size=batch_size, device=device,
                         add_special_tokens=template != "chat")
    finally:
        model.train(was_training)
    index = {label: i for i, label in enumerate(labels)}
    return [index.get(text.strip()) for text in texts], texts


def scores(predicted: list[int | None] | torch.Tensor, gold: torch.Tensor, num_labels: int) -> dict[str, float]:
    """Accuracy, macro-F1 and micro-F1 (metrics.classification_scores), an unanswered example counting as wrong; and
    the share unanswered."""
    as_ids = torch.tensor([-1 if p is None else int(p) for p in predicted], dtype=torch.long)
    unanswered = float((as_ids < 0).double().mean()) if len(as_ids) else 0.0
    return {**classification_scores(as_ids, gold, num_labels), "unanswered": unanswered}
