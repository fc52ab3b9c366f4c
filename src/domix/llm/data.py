"""Instruction data for causal LMs: jsonl rows (or a JSON list of them), prompt templates, response-only labels.

A row is either ``{"prompt": ..., "response": ...}`` or Alpaca style
``{"instruction": ..., "input": ... (optional), "output": ...}``; both become an
:class:`Example` (a prompt row is an instruction with no input).

Templates (``--template``):

- ``alpaca`` (default; what the LLM-Adapters and DoRA commonsense scripts train and test with)::

      Below is an instruction that describes a task[, paired with an input that provides further
      context]. Write a response that appropriately completes the request.

      ### Instruction:
      {instruction}

      [### Input:
      {input}

      ]### Response:
      {output}</s>

- ``chat``: the tokenizer's chat template, the instruction (and input, after a blank line) as the
  user turn and the output as the assistant turn; the template's own end-of-turn ends the response.
- ``plain``: the instruction (and input, after a blank line) then the output directly, then EOS;
  for prompt/response rows that carry their own separators.

Prompt and response are tokenized separately and joined, so the labels mark exactly the response
tokens (and EOS) and the prompt is the token sequence the model sees at generation time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from domix.batches import IGNORE_INDEX
from domix.errors import DomixError
from domix.sources import json_records
from domix.llm.config import TEMPLATES

_ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                 "Write a response that appropriately completes the request.\n\n"
                 "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
_ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
           "### Instruction:\n{instruction}\n\n### Response:\n")


@dataclass
class Example:
    instruction: str
    input: str
    output: str


def read_examples(path: str | Path, name: str = "train") -> list[Example]:
    """Rows of an instruction file (prompt/response or instruction/input/output): jsonl, or one JSON list of
    records as LLM-Adapters distributes commonsense_170k.json and its benchmarks' train.json."""
    path = Path(path)
    if not path.is_file():
        raise DomixError(f"the {name} file {path} does not exist; give a jsonl file (or a JSON list) of prompt/response or instruction/output rows")
    examples = []
    for where, row in json_records(path):
        if "prompt" in row or "response" in row:
            if "prompt" not in row or "response" not in row:
                missing = "response" if "prompt" in row else "prompt"
                raise DomixError(f"{where} has no {missing!r} field; a row needs 'prompt' and 'response' "
                                 "(or 'instruction', optional 'input', and 'output')")
            examples.append(Example(str(row["prompt"]), "", str(row["response"])))
        elif "instruction" in row and "output" in row:
            examples.append(Example(str(row["instruction"]), str(row.get("input") or ""), str(row["output"])))
        else:
            missing = "output" if "instruction" in row else "instruction"
            raise DomixError(f"{where} has no {missing!r} field; a row needs 'prompt' and 'response' "
                             "(or 'instruction', optional 'input', and 'output')")
    if not examples:
        raise DomixError(f"the {name} file {path} holds no example")
    return examples


def _user_text(instruction: str, input: str) -> str:
    return f"{instruction}\n\n{input}" if input else instruction


def prompt_text(instruction: str, input: str, template: str, tokenizer) -> str:
    """The text the model is given (and generates after): the example without its output."""
    if template == "alpaca":
        return (_ALPACA_INPUT if input else _ALPACA).format(instruction=instruction, input=input)
    if template == "plain":
        return _user_text(instruction, input)
    if template == "chat":
        _check_chat(tokenizer)
        return tokenizer.apply_chat_template([{"role": "user", "content": _user_text(instruction, input)}],
                                             tokenize=False, add_generation_prompt=True)
    raise DomixError(f"unknown template {template!r}; use one of {', '.join(TEMPLATES)}")


def _check_chat(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise DomixError("--template chat needs a tokenizer with a chat template, and this one has none; use alpaca or plain")


def _response_text(example: Example, prompt: str, template: str, tokenizer) -> str:
    if template != "chat":
        return example.output
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": _user_text(example.instruction, example.input)}, {"role": "assistant", "content": example.output}],
        tokenize=False)
    if not full.startswith(prompt):
        raise DomixError("this tokenizer's chat template writes the user turn differently with and without the answer, "
                         "so the response tokens cannot be told apart; use --template alpaca or plain")
    return full[len(prompt):]


def encode_example(example: Example, tokenizer, template: str, max_length: int) -> tuple[list[int], list[int]] | None:
    """(input ids, labels) with labels -100 on the prompt; None when truncation leaves no response token."""
    prompt = prompt_text(example.instruction, example.input, template, tokenizer)
    prompt_ids = tokenizer(prompt, add_special_tokens=template != "chat")["input_ids"]  # a chat template writes its own BOS
    response_ids = tokenizer(_response_text(example, prompt, template, tokenizer), add_special_tokens=False)["input_ids"]
    if template != "chat":
        response_ids = response_ids + [tokenizer.eos_token_id]
    ids = (prompt_ids + response_ids)[:max_length]
    if len(ids) <= len(prompt_ids):
        return None
    labels = [IGNORE_INDEX] * len(prompt_ids) + ids[len(prompt_ids):]
    return ids, labels


def encode_examples(examples: list[Example], tokenizer, template: str, max_length: int, name: str = "train") -> tuple[list[tuple[list[int], list[int]]], int]:
    """Encoded examples and how many were dropped (prompt alone at least ``max_length`` tokens)."""
    if tokenizer.eos_token_id is None and template != "chat":
        raise DomixError("this tokenizer has no end-of-sequence token to end responses with; use --template chat")
    encoded = [encode_example(e, tokenizer, template, max_length) for e in examples]
    kept = [e for e in encoded if e is not None]
    if not kept:
        raise DomixError(f"every {name} example's prompt is at least --max-length ({max_length}) tokens long, so no response "
                         "token is left to train on; raise --max-length")
    return kept, len(encoded) - len(kept)


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask, and labels (-100 on padding), as wide as the longest row rounded up to a
    ``multiple`` of tokens (a GPU pays a first pass at every new shape: a multiple makes a few shapes of many lengths)."""
    width = -(-max(len(ids) for ids, _ in rows) // multiple) * multiple
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        mask[i, : len(row_ids)] = 1
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
