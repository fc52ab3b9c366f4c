"""Multiple-choice commonsense evaluation of a causal LM, in the two protocols papers use.

``loglikelihood`` (as lm-evaluation-harness scores BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC,
OBQA): each choice is a (context, continuation) pair; its score is the summed log-probability of
the continuation's tokens given the context. ``acc`` takes the best sum, ``acc_norm`` the best sum
divided by the choice's length in characters (lm-eval's ``acc_norm``: ``len(choice)`` of the choice
string). Tokenization follows lm-eval's causal path: trailing spaces of the context move to the
continuation, the pair is encoded whole and the context's tokens cut off its front.

``generate`` (as the LLM-Adapters / DoRA ``commonsense_evaluate.py`` scripts do): the question is
written as their instruction ("Please choose the correct answer ... Answer format: answer1/answer2"),
wrapped in the model's prompt template, answered by greedy decoding, and the first answer keyword in
the output (``true``/``false``, ``solution1``.., ``answer1``.., ``ending1``.., ``option1``..; matched
case-sensitively, as they do) is the prediction; no keyword counts as wrong.

Input: jsonl files in the tasks' public (Hugging Face datasets) formats, or LLM-Adapters' own files (one
JSON list of records, or jsonl of them); the format is read off the first row's fields:

==============  ==============================================================================
boolq           question, passage, answer (true/false) or label (0 = no, 1 = yes)
piqa            goal, sol1, sol2, label (0/1)
siqa            context, question, answerA, answerB, answerC, label ("1".."3")
hellaswag       activity_label, ctx_a, ctx_b, endings (4), label ("0".."3")
winogrande      sentence (with one "_"), option1, option2, answer ("1"/"2")
arc             question, choices {text: [...], label: [...]}, answerKey (ARC-Easy and -Challenge)
openbookqa      question_stem, choices {text, label}, answerKey
generic         context, choices (list of strings), label (index)
llm_adapters    instruction, output, answer (the keyword: true/false, solution1.., answer1.., ...)
==============  ==============================================================================

``llm_adapters`` records (LLM-Adapters' ``dataset/*/test.json`` and ``train.json``, commonsense_170k) carry
the question only inside the instruction, so both protocols read it from there. ``generate`` gives the
instruction as it is and compares the extracted keyword with ``answer``; the keywords looked for are the
published script's regex for the answer's family (``true|false``; ``solution1|solution2``;
``answer1``..``answer5`` for SIQA, ARC and OBQA alike; ``ending1``..``ending4``; ``option1|option2``), so an
``answer5`` in the output of a 4-choice question is a wrong answer, not skipped. ``loglikelihood`` parses
the options: the "Answer format: w1/w2/.." line counts them, the text after each "Word1: ", "Word2: " ..
marker is one (their number must equal that count), the stem is the text before the first marker less the
"Please ...: " lead-in, and the label is the index of ``answer``. Context "Question: {stem}\nAnswer:" and
the option texts as continuations (lm-eval's ARC and PIQA prompt, used for every answer/solution file,
since the file does not say which benchmark it is); HellaSwag (ending) the stem as context, cleaned as
lm-eval cleans it; WinoGrande (option) lm-eval's partial scoring of the sentence's blank; BoolQ (no options,
and no passage in these files) "Question: {question}\nAnswer:" with " no"/" yes" as lm-eval scores BoolQ
(label 1 = true). So BoolQ here is scored without its passage: not comparable with lm-eval's BoolQ.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from domix.engine.predict import length_batches
from domix.errors import DomixError
from domix.sources import json_records
from domix.llm.config import FORMATS, PROTOCOLS, ChoiceSettings

_REQUIRED = {  # detection order: the first format whose fields a row has
    "hellaswag": ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
    "winogrande": ("sentence", "option1", "option2", "answer"),
    "piqa": ("goal", "sol1", "sol2", "label"),
    "siqa": ("context", "question", "answerA", "answerB", "answerC", "label"),
    "openbookqa": ("question_stem", "choices", "answerKey"),
    "arc": ("question", "choices", "answerKey"),
    "boolq": ("question", "passage"),
    "generic": ("context", "choices", "label"),
    "llm_adapters": ("instruction", "output", "answer"),
}
# LLM-Adapters' commonsense_evaluate.py extracts with one regex per dataset: true|false (boolq), solution1|solution2
# (piqa), answer1|..|answer5 (social_i_qa, ARC-Easy, ARC-Challenge, openbookqa), ending1|..|ending4 (hellaswag),
# option1|option2 (winogrande); the answer keyword's word says which (the file's name may be anything)
_FAMILY_SIZE = {"solution": 2, "answer": 5, "ending": 4, "option": 2}


@dataclass
class Question:
    contexts: list[str]  # per choice (the same for all but WinoGrande)
    continuations: list[str]  # per choice, with lm-eval's target delimiter
    choices: list[str]  # the choice strings whose length normalises acc_norm
    label: int
    instruction: str  # the generate protocol's question, in LLM-Adapters' wording
    keywords: list[str]  # the answer words the extractor looks for, choice i's first (llm_adapters: the published
    # regex's whole family, e.g. answer1..answer5 for a 4-choice question, so that answer5 is wrong, not skipped)


def _listing(stem: str, word: str, options: list[str]) -> str:
    lines = "".join(f"\n\n{word.capitalize()}{i}: {o}" for i, o in enumerate(options, 1))
    fmt = "/".join(f"{word}{i}" for i in range(1, len(options) + 1))
    return f"{stem}{lines}\n\nAnswer format: {fmt}"


def _same(context: str, choices: list[str], label: int, instruction: str, keywords: list[str]) -> Question:
    return Question([context] * len(choices), [" " + c for c in choices], choices, label, instruction, keywords)


def _hellaswag_text(text: str) -> str:  # lm-eval's preprocessing of the WikiHow artefacts
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def _index(value, n: int, base: int = 0) -> int:
    try:
        i = int(value) - base
    except (TypeError, ValueError):
        raise ValueError(f"label {value!r} is not a number") from None
    if not 0 <= i < n:
        raise ValueError(f"label {value!r} is out of range for {n} choices")
    return i


def _key_index(row: dict) -> int:
    labels = [str(x) for x in row["choices"]["label"]]
    key = str(row["answerKey"]).strip()
    if key not in labels:
        raise ValueError(f"answerKey {key!r} is not one of the choice labels {labels}")
    return labels.index(key)


def _blank(sentence: str, options: list[str], label: int, instruction: str, keywords: list[str]) -> Question:
    """lm-eval's WinoGrande partial scoring: the context is the sentence up to the blank with the option filled
    in, and the rest of the sentence (the same for every option) is what is scored."""
    if sentence.count("_") != 1:
        raise ValueError("the sentence needs exactly one '_' blank")
    cut = sentence.index("_")
    contexts = [sentence[:cut] + o for o in options]
    target = " " + sentence[cut + 1 :].strip()
    return Question(contexts, [target] * len(options), contexts, label, instruction, keywords)


def _llm_adapters(row: dict) -> Question:
    """A record of LLM-Adapters' files: the options parsed out of its instruction (see the module's docstring)."""
    instruction, answer = str(row["instruction"]), str(row["answer"]).strip()
    family = re.fullmatch(r"(solution|answer|ending|option)([1-9][0-9]*)", answer)
    if answer not in ("true", "false") and not family:
        raise ValueError(f"answer {answer!r} is not an answer keyword (true/false, solution1.., answer1.., ending1.., option1..)")
    fmt_line = re.search(r"(?:^|\s)Answer format:\s*(\S+)\s*$", instruction)
    if not fmt_line:
        raise ValueError("the instruction has no closing 'Answer format: ...' line to count the options by")
    listed = fmt_line.group(1).split("/")
    if answer not in listed:
        raise ValueError(f"the answer {answer!r} is not one of the instruction's Answer format keywords {listed}")
    body = instruction[: fmt_line.start()]
    if not family:  # BoolQ: a yes/no question, no options written out
        if sorted(listed) != ["false", "true"]:
            raise ValueError(f"a true/false answer needs 'Answer format: true/false', not {'/'.join(listed)}")
        stem = re.sub(r"^Please [^:]*: ", "", body.strip())
        return _same(f"Question: {stem}\nAnswer:", ["no", "yes"], ["false", "true"].index(answer), instruction, ["false", "true"])
    word = family.group(1)
    if listed != [f"{word}{i}" for i in range(1, len(listed) + 1)]:
        raise ValueError(f"the Answer format line should list {word}1/{word}2/.. in order, not {'/'.join(listed)}")
    markers = list(re.finditer(rf"(?:^|(?<=\s)){word.capitalize()}([0-9]+):", body))
    if [m.group(1) for m in markers] != [str(i) for i in range(1, len(listed) + 1)]:
        raise ValueError(f"the instruction writes the options {[m.group(0) for m in markers]} but its Answer format line "
                         f"names {len(listed)} ({'/'.join(listed)}); each option needs its own "
                         f"'{word.capitalize()}N: ' marker")
    options = [body[m.end() : (markers[i + 1].start() if i + 1 < len(markers) else len(body))].strip() for i, m in enumerate(markers)]
    stem = re.sub(r"^Please [^:]*: ", "", body[: markers[0].start()].strip())
    label = listed.index(answer)
    keywords = [f"{word}{i}" for i in range(1, max(len(options), _FAMILY_SIZE[word]) + 1)]
    if word == "option":
        return _blank(stem, options, label, instruction, keywords)
    if word == "ending":
        return _same(_hellaswag_text(stem), [_hellaswag_text(o) for o in options], label, instruction, keywords)
    return _same(f"Question: {stem}\nAnswer:", options, label, instruction, keywords)


def _question(fmt: str, row: dict) -> Question:
    if fmt == "boolq":
        if "answer" in row:
            label = int(bool(row["answer"])) if isinstance(row["answer"], bool) else {"false": 0, "true": 1}.get(str(row["answer"]).lower())
            if label is None:
                raise ValueError(f"answer {row['answer']!r} is not true or false")
        elif "label" in row:
            label = _index(row["label"], 2)
        else:
            raise KeyError("answer")
        instruction = f"Please answer the following question with true or false, question: {row['question']}?\n\nAnswer format: true/false"
        return _same(f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:", ["no", "yes"], label, instruction, ["false", "true"])
    if fmt == "piqa":
        sols = [row["sol1"], row["sol2"]]
        return _same(f"Question: {row['goal']}\nAnswer:", sols, _index(row["label"], 2),
                     _listing(f"Please choose the correct solution to the question: {row['goal']}", "solution", sols), ["solution1", "solution2"])
    if fmt == "siqa":
        answers = [row["answerA"], row["answerB"], row["answerC"]]
        return _same(f"Q: {row['context']} {row['question']}\nA:", answers, _index(row["label"], 3, base=1),
                     _listing(f"Please choose the correct answer to the question: {row['context']} {row['question']}", "answer", answers),
                     ["answer1", "answer2", "answer3"])
    if fmt == "hellaswag":
        ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
        endings = [_hellaswag_text(e) for e in row["endings"]]
        return _same(_hellaswag_text(row["activity_label"] + ": " + ctx), endings, _index(row["label"], len(endings)),
                     _listing(f"Please choose the correct ending to complete the given sentence: {row['activity_label']}: {ctx}", "ending",
                              list(row["endings"])), [f"ending{i}" for i in range(1, len(endings) + 1)])
    if fmt == "winogrande":
        sentence, options = row["sentence"], [row["option1"], row["option2"]]
        instruction = _listing(f"Please choose the correct answer to fill in the blank to complete the given sentence: {sentence}", "option", options)
        return _blank(sentence, options, _index(row["answer"], 2, base=1), instruction, ["option1", "option2"])
    if fmt == "llm_adapters":
        return _llm_adapters(row)
    if fmt in ("arc", "openbookqa"):
        stem = row["question"] if fmt == "arc" else row["question_stem"]
        texts = list(row["choices"]["text"])
        context = f"Question: {stem}\nAnswer:" if fmt == "arc" else stem
        return _same(context, texts, _key_index(row), _listing(f"Please choose the correct answer to the question: {stem}", "answer", texts),
                     [f"answer{i}" for i in range(1, len(texts) + 1)])
    choices = [str(c) for c in row["choices"]]
    if len(choices) < 2:
        raise ValueError("'choices' needs at least two strings")
    return _same(row["context"], choices, _index(row["label"], len(choices)),
                 _listing(f"Please choose the correct answer to the question: {row['context']}", "answer", choices),
                 [f"answer{i}" for i in range(1, len(choices) + 1)])


def detect_format(row: dict) -> str:
    for fmt, fields in _REQUIRED.items():
        if all(f in row for f in fields):
            return fmt
    if "instruction" in row and "output" in row:  # an LLM-Adapters record less its keyword: say which field is missing
        raise DomixError("an instruction/output row has no 'answer' field (the correct keyword, e.g. answer2 or true), which "
                         "the llm_adapters format needs to score it; give LLM-Adapters' dataset files as they are")
    expected = "; ".join(f"{fmt}: {', '.join(fields)}" for fmt, fields in _REQUIRED.items())
    raise DomixError(f"cannot tell the task format from the fields {sorted(row)}; a row needs the fields of one of ({expected})")


def read_questions(path: str | Path, fmt: str = "auto", limit: int | None = None) -> tuple[str, list[Question]]:
    """The questions of a jsonl file or a JSON list of records (its format, read off the first row unless given)."""
    path = Path(path)
    if not path.is_file():
        raise DomixError(f"task file {path} does not exist; give a jsonl file in one of the formats {', '.join(FORMATS)}")
    if fmt != "auto" and fmt not in FORMATS:
        raise DomixError(f"unknown task format {fmt!r}; use auto or one of {', '.join(FORMATS)}")
    questions = []
    for where, row in json_records(path):
        if limit is not None and len(questions) >= limit:
            break
        if fmt == "auto":
            try:
                fmt = detect_format(row)
            except DomixError as err:
                raise DomixError(f"{where}: {err}") from None
        try:
            questions.append(_question(fmt, row))
        except KeyError as err:
            raise DomixError(f"{where} has no {err.args[0]!r} field, which the {fmt} format needs "
                             f"({', '.join(_REQUIRED[fmt])})") from None
        except (ValueError, TypeError, AttributeError) as err:
            raise DomixError(f"{where}: {err} ({fmt} format)") from None
    if not questions:
        raise DomixError(f"task file {path} holds no question")
    return fmt, questions


def instruction_rows(questions: list[Question]) -> list[dict]:
    """The questions as LLM-Adapters-style training rows: {instruction, input, output: "the correct answer is X"}."""
    return [{"instruction": q.instruction, "input": "", "output": f"the correct answer is {q.keywords[q.label]}"} for q in questions]


def cloze_rows(questions: list[Question]) -> list[dict]:
    """The questions as cloze training rows: the log-likelihood protocol's context as the prompt, the correct choice's
    continuation as the response (train with ``--template plain``: what the model learns is what that protocol scores)."""
    return [{"prompt": q.contexts[q.label], "response": q.continuations[q.label]} for q in questions]


# ---------------------------------------------------------------- log-likelihood protocol

def _encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation, context = context[-spaces:] + continuation, context[:-spaces]
    if not context:  # condition on BOS (or EOS), as lm-eval does for an empty context
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [prefix], tokenizer(continuation, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation)["input_ids"]
    context_ids = tokenizer(context)["input_ids"]
    return context_ids, whole[len(context_ids):]


@torch.no_grad()
def loglikelihoods(model: nn.Module, tokenizer, requests: list[tuple[str, str]], batch_size: int = ChoiceSettings.batch_size,
                   max_length: int = ChoiceSettings.max_length, device="cpu") -> list[tuple[float, bool]]:
    """(summed log-probability of the continuation given the context, whether it is the greedy continuation)
    for each (context, continuation); the input is cut from the left to ``max_length`` tokens."""
    model.eval()
    encoded = []
    for context, continuation in requests:
        ctx, cont = _encode_pair(tokenizer, context, continuation)
        if not cont:
            raise DomixError(f"the continuation {continuation!r} encodes to no token after the context {context[-40:]!r}")
        encoded.append(((ctx + cont)[-(max_length + 1):][:-1], cont))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results: list[tuple[float, bool]] = [None] * len(encoded)
    for batch in length_batches([len(ids) for ids, _ in encoded], batch_size):
        chunk = [encoded[j] for j in batch]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (row, _) in enumerate(chunk):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        logprobs = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.double(), dim=-1).cpu()
        for i, (j, (row, cont)) in enumerate(zip(batch, chunk)):
            end = len(row)
            rows = logprobs[i, end - len(cont) : end]  # position t predicts token t + 1
            target = torch.tensor(cont)
            results[j] = (float(rows.gather(1, target[:, None]).sum()), bool((rows.argmax(-1) == target).all()))
    return results


def score_loglikelihood(model: nn.Module, tokenizer, questions: list[Question], batch_size: int = ChoiceSettings.batch_size,
                        max_length: int = ChoiceSettings.max_length, device="cpu") -> dict:
    """acc and acc_norm over the questions, and each question's choice scores."""
    requests = [(c, t) for q in questions for c, t in zip(q.contexts, q.continuations)]
    lls = [ll for ll, _ in loglikelihoods(model, tokenizer, requests, batch_size, max_length, device)]
    correct = correct_norm = 0
    details, at = [], 0
    for q in questions:
        scores = torch.tensor(lls[at : at + len(q.choices)], dtype=torch.float64)
        at += len(q.choices)
        lengths = torch.tensor([float(len(c)) for c in q.choices], dtype=torch.float64)
        pred, pred_norm = int(scores.argmax()), int((scores / lengths).argmax())
        correct += pred == q.label
        correct_norm += pred_norm == q.label
        details.append({"label": q.label, "loglikelihoods": scores.tolist(), "prediction": pred, "prediction_norm": pred_norm})
    n = len(questions)
    return {"acc": correct / n, "acc_norm": correct_norm / n, "n": n, "details": details}


# ---------------------------------------------------------------- generate-then-extract protocol

def extract_answer(text: str, keywords: list[str]) -> int | None:
    """Index of the first answer keyword in ``text`` (LLM-Adapters: the first regex match), or None."""
    # as their re.findall(r'answer1|answer2|..', output)[0]: case-sensitive ("Answer2" and "TRUE" are no answer), no
    # word boundaries ("untrue" reads as true), the leftmost match wins however the output goes on
    found = re.search("|".join(re.escape(k) for k in sorted(keywords, key=len, reverse=True)), text)
    return keywords.index(found.group(0)) if found else None


def check_beams(num_beams: int) -> None:
    if num_beams < 1:
        raise DomixError(f"--num-beams must be at least 1 (1: greedy), not {num_beams}")


@torch.no_grad()
def generate(model: nn.Module, tokenizer, prompts: list[str], max_new_tokens: int = ChoiceSettings.max_new_tokens,
             batch_size: int = ChoiceSettings.batch_size,
             device="cpu", add_special_tokens: bool = True, num_beams: int = 1) -> list[str]:
    """Continuations of ``prompts`` (left-padded batches), decoded without special tokens: greedy, or beam
    search with ``num_beams`` beams (the published DoMIX and LLM-Adapters evaluations use 4)."""
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    outputs: list[str] = [None] * len(prompts)
    for batch in length_batches([len(r) for r in encoded], batch_size):
        rows = [encoded[j] for j in batch]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        new = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, num_beams=num_beams, pad_token_id=pad)[:, width:]
        for j, text in zip(batch, tokenizer.batch_decode(new.cpu(), skip_special_tokens=True)):
            outputs[j] = text
    return outputs


def score_generate(model: nn.Module, tokenizer, questions: list[Question], template: str = "alpaca", max_new_tokens: int = 32,
                   batch_size: int = 8, device="cpu", num_beams: int = 1) -> dict:
    """acc of generate-then-extract, the share of outputs with no answer keyword, and each output."""
    from domix.llm.data import prompt_text

    prompts = [prompt_text(q.instruction, "", template, tokenizer) for q in questions]
    texts = generate(model, tokenizer, prompts, max_new_tokens, batch_size, device, add_special_tokens=template != "chat",
                     num_beams=num_beams)
    details, correct, unanswered = [], 0, 0
    for q, text in zip(questions, texts):
        pred = extract_answer(text, q.keywords)
        correct += pred == q.label
        unanswered += pred is None
        details.append({"label": q.label, "output": text, "prediction": pred})
    n = len(questions)
    return {"acc": correct / n, "unanswered": unanswered / n, "n": n, "details": details}


# ---------------------------------------------------------------- a run over several tasks

PROTOCOL_NOTES = {
    "loglikelihood": "summed log-probability of each choice given the context (lm-evaluation-harness prompts and "
                     "tokenization); acc = best sum, acc_norm = best sum / choice length in characters",
    "generate": "generation (greedy, or beam search: see num_beams) from the LLM-Adapters/DoRA instruction in the model's "
                "prompt template, first answer keyword extracted (case-sensitive); no keyword = wrong",
}


def score_choice(model: nn.Module, tokenizer, read: dict[str, tuple[str, list[Question]]], protocols: tuple[str, ...], template: str,
                 device, batch_size: int = ChoiceSettings.batch_size, max_length: int = ChoiceSettings.max_length,
                 max_new_tokens: int = ChoiceSettings.max_new_tokens, num_beams: int = 1) -> tuple[dict, dict[str, list[dict]]]:
    """Every task of ``read`` (name -> its format and questions, :func:`read_questions`) in every protocol: the report
    (``{"template", "generation", "protocols", "results": [{"task", "format", "protocol", "metric", "value", "n"}]}``) and
    each question's scores or output, keyed "task/protocol"."""
    results, per_question = [], {}
    for name, (fmt, questions) in read.items():
        for protocol in protocols:
            if protocol == "loglikelihood":
                scores = score_loglikelihood(model, tokenizer, questions, batch_size, max_length, device)
                metrics = ("acc", "acc_norm")
            else:
                scores = score_generate(model, tokenizer, questions, template, max_new_tokens, batch_size, device, num_beams)
                metrics = ("acc", "unanswered")
            per_question[f"{name}/{protocol}"] = scores["details"]
            results += [{"task": name, "format": fmt, "protocol": protocol, "metric": m, "value": scores[m], "n": scores["n"]} for m in metrics]
    report = {"template": template if "generate" in protocols else None,
              "generation": {"num_beams": num_beams, "max_new_tokens": max_new_tokens, "do_sample": False} if "generate" in protocols else None,
              "protocols": {p: PROTOCOL_NOTES[p] for p in protocols}, "results": results}
    return report, per_question


def evaluate_choice(source: str, tasks: dict[str, str], protocols: tuple[str, ...] = PROTOCOLS, out: str | None = None,
                    limit: int | None = None, batch_size: int = ChoiceSettings.batch_size, max_length: int = ChoiceSettings.max_length,
                    max_new_tokens: int = ChoiceSettings.max_new_tokens,
                    template: str | None = None, device: str = "auto", dtype: str = "auto", details: str | None = None,
                    base: str | None = None, num_beams: int = 1) -> dict:
    """Score a model (domix instruct folder, exported folder, or any causal LM) on task files.

    ``tasks`` maps a name to a jsonl file. Returns (and writes to ``out``) ``{"model", "protocols",
    "results": [{"task", "format", "protocol", "metric", "value", "n"}, ...]}``: every number names
    the protocol that produced it.
    """
    from domix import atomic
    from domix.llm.data import TEMPLATES
    from domix.llm.model import load_for_eval
    from domix.system import resolve_device

    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown or not protocols:
        raise DomixError(f"unknown protocol {unknown}; use {' and/or '.join(PROTOCOLS)}")
    check_beams(num_beams)
    if not tasks:
        raise DomixError("no task given; pass --task NAME=FILE (jsonl in a public format or context/choices/label)")
    if template is not None and template not in TEMPLATES:
        raise DomixError(f"unknown template {template!r}; use one of {', '.join(TEMPLATES)}")
    read = {name: read_questions(path, limit=limit) for name, path in tasks.items()}  # bad files fail before the model loads
    dev = resolve_device(device)
    model, tokenizer, trained_template = load_for_eval(source, dev, dtype, base)
    template = template or trained_template or "alpaca"
    report, per_question = score_choice(model, tokenizer, read, protocols, template, dev, batch_size, max_length, max_new_tokens,
                                        num_beams)
    report = {"model": str(source), **report}
    if out:
        atomic.write_json(Path(out), report)
    if details:
        atomic.write_json(Path(details), per_question)
    return report


def format_results(report: dict) -> str:
    rows = [("task", "format", "protocol", "metric", "value", "n")]
    rows += [(r["task"], r["format"], r["protocol"], r["metric"], f"{r['value']:.4f}", str(r["n"])) for r in report["results"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
