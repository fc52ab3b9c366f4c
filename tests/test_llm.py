"""Causal-LM instruction fine-tuning (domix instruct), folding, and multiple-choice evaluation, on a tiny Llama."""

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from domix.batches import IGNORE_INDEX
from domix.methods.bridge.model import bridged_layers
from domix.cli import main
from domix.errors import DomixError
from domix.llm.choice import (
    extract_answer, generate, read_questions, score_loglikelihood, evaluate_choice, instruction_rows,
)
from domix.llm.config import InstructConfig
from domix.llm.data import Example, collate, encode_example, encode_examples, read_examples
from domix.llm.model import export_causal, load_causal, load_causal_task_model
from domix.llm.train import instruct
from domix.store import load_module, load_store

from conftest import WORDS


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def instruction_data(path: Path, n: int, seed: int) -> Path:
    """A learnable mapping: the instruction's words come from one topic, the response names the topic."""
    rng = random.Random(seed)
    topics = {"pizza": WORDS[:8], "gene": WORDS[10:16], "network": WORDS[18:26]}
    rows = []
    for i in range(n):
        answer = list(topics)[i % 3]
        rows.append({"instruction": " ".join(rng.choice(topics[answer]) for _ in range(rng.randint(2, 5))), "output": answer})
    return write_jsonl(path, rows)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("instruct-data")
    return {"train": instruction_data(root / "train.jsonl", 64, 0), "dev": instruction_data(root / "dev.jsonl", 16, 1)}


def cfg(data, out, **kw) -> InstructConfig:
    settings = dict(train=str(data["train"]), dev=str(data["dev"]), out=str(out), template="plain", epochs=2,
                    batch_size=8, lr=2e-2, max_length=32, warmup_ratio=0.0)
    settings.update(kw)
    return InstructConfig(**settings)


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------- data

def test_labels_mark_exactly_the_response_tokens_and_padding_is_masked(tiny_llama):
    _, tok = load_causal(str(tiny_llama), "float32")
    prompt, response = ids_of(tok, "food pasta pizza"), ids_of(tok, "wine table")
    ids, labels = encode_example(Example("food pasta pizza", "", "wine table"), tok, "plain", 64)
    assert ids == prompt + response + [tok.eos_token_id]
    assert labels == [IGNORE_INDEX] * 3 + response + [tok.eos_token_id]
    # instruction + input, alpaca: the prompt is the whole template, the labels start right after it
    ids, labels = encode_example(Example("food", "gene cell", "model data"), tok, "alpaca", 256)
    n_prompt = len(tok("Below is an instruction that describes a task, paired with an input that provides further context. "
                       "Write a response that appropriately completes the request.\n\n### Instruction:\nfood\n\n### Input:\n"
                       "gene cell\n\n### Response:\n")["input_ids"])
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] == ids_of(tok, "model data") + [tok.eos_token_id]
    # a chat template: its own end-of-turn ends the response, no extra EOS
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
                         "{% if add_generation_prompt %}assistant {% endif %}")
    ids, labels = encode_example(Example("food", "", "wine table"), tok, "chat", 64)
    n_prompt = len(ids_of(tok, "user food </s> assistant"))
    assert labels == [IGNORE_INDEX] * n_prompt + ids_of(tok, "wine table </s>")
    # right padding: mask 0 and label -100 past each row's end
    batch = collate([(ids[:3], labels[:3]), (ids, labels)], tok.pad_token_id)
    assert batch["attention_mask"][0].tolist() == [1, 1, 1] + [0] * (len(ids) - 3)
    assert batch["labels"][0, 3:].eq(IGNORE_INDEX).all() and batch["input_ids"][0, 3:].eq(tok.pad_token_id).all()
    assert batch["labels"][1].tolist() == labels


def test_truncation_keeps_response_tokens_or_drops_the_example(tiny_llama):
    _, tok = load_causal(str(tiny_llama), "float32")
    long_prompt = Example("food " * 10, "", "wine table")
    assert encode_example(long_prompt, tok, "plain", 10) is None
    ids, labels = encode_example(long_prompt, tok, "plain", 11)
    assert len(ids) == 11 and labels[-1] == ids[-1] and labels[:10] == [IGNORE_INDEX] * 10
    kept, dropped = encode_examples([long_prompt, Example("food", "", "wine")], tok, "plain", 10)
    assert (len(kept), dropped) == (1, 1)
    with pytest.raises(DomixError, match="raise --max-length"):
        encode_examples([long_prompt], tok, "plain", 10)
    with pytest.raises(DomixError, match="needs a tokenizer with a chat template"):
        encode_example(Example("food", "", "wine"), tok, "chat", 10)


def test_bad_instruction_files_are_refused(tmp_path):
    with pytest.raises(DomixError, match="does not exist"):
        read_examples(tmp_path / "none.jsonl")
    with pytest.raises(DomixError, match="holds no example"):
        read_examples(write_jsonl(tmp_path / "empty.jsonl", []))
    with pytest.raises(DomixError, match=r"bad.jsonl:2 has no 'response' field"):
        read_examples(write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c"}]))
    with pytest.raises(DomixError, match=r"has no 'output' field"):
        read_examples(write_jsonl(tmp_path / "bad2.jsonl", [{"instruction": "a", "input": "b"}]))
    (tmp_path / "broken.jsonl").write_text('{"prompt": \n')
    with pytest.raises(DomixError, match="not valid JSON"):
        read_examples(tmp_path / "broken.jsonl")
    rows = read_examples(write_jsonl(tmp_path / "ok.jsonl", [{"prompt": "p", "response": "r"}, {"instruction": "i", "input": None, "output": "o"}]))
    assert rows == [Example("p", "", "r"), Example("i", "", "o")]


# ---------------------------------------------------------------- training

def test_domix_instruct_lowers_dev_loss_and_trains_only_bridge_and_b(llama_store, tiny_llama, data, tmp_path):
    trainable = {}

    def look(task, step, loss, model):
        if step == 1:
            trainable.update({n: p.numel() for n, p in model.named_parameters() if p.requires_grad})

    record = instruct(cfg(data, tmp_path / "run", modules=str(llama_store), epochs=3), on_step=look)
    # the LM head stays the tiny model's frozen random one (logits within about ±0.6), so 0.25 nats is a clear drop
    assert record["dev_loss"] < record["dev_loss_before"] - 0.25
    assert len(record["dev_history"]) == 3 and record["dev_loss"] == min(h["loss"] for h in record["dev_history"])
    assert trainable and all(n.endswith((".lora_B", ".bridge")) for n in trainable)
    assert {n.rsplit(".", 1)[0] for n in trainable} == set(record["layers"])
    assert record["trainable_parameters"] == sum(trainable.values())
    # everything else is the base's, A_cat is the modules' A; B_cat moved
    model, _, _ = load_causal_task_model(tmp_path / "run" / "model")
    base, _ = load_causal(str(tiny_llama), "float32")
    base_params = dict(base.named_parameters())
    for name, p in model.named_parameters():
        if not name.endswith((".lora_B", ".bridge")):
            assert torch.equal(p, base_params[name.replace(".base_layer", "")]), name
    modules = load_store(llama_store)
    layer = bridged_layers(model)[record["layers"][0]]
    assert torch.equal(layer.lora_A, torch.cat([m.lora_A[record["layers"][0]] for m in modules]))
    assert not torch.equal(layer.lora_B, torch.cat([m.lora_B[record["layers"][0]] for m in modules], dim=1))
    assert (tmp_path / "run" / "result.json").is_file() and not (tmp_path / "run" / "checkpoint").exists()


def test_any_peft_lora_adapter_composes_and_the_base_comes_from_its_config(llama_store, tiny_llama, data, tmp_path):
    from peft import LoraConfig, get_peft_model

    base, _ = load_causal(str(tiny_llama), "float32")
    torch.manual_seed(0)
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    record = instruct(cfg(data, tmp_path / "run", adapters=[str(tmp_path / "adapter"), str(llama_store / "food")], epochs=1))
    assert [m["name"] for m in record["modules"]] == ["adapter", "food"]
    assert record["base_model"]["name"] == str(tiny_llama)  # read off adapter_config.json
    model, _, _ = load_causal_task_model(tmp_path / "run" / "model")
    layers = bridged_layers(model)
    adapter, food = load_module(tmp_path / "adapter"), load_module(llama_store / "food")
    q, up = "model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj"
    assert torch.equal(layers[q].lora_A, torch.cat([adapter.lora_A[q], food.lora_A[q]]))  # rank 2 + 4, by name
    assert torch.equal(layers[up].lora_A, food.lora_A[up])  # only the domix module adapts it
    assert layers[q].scales.tolist() == [2.0] * 2 + [food.scaling] * 4


def test_adapters_of_one_name_are_told_apart_by_path_in_any_order(tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model

    from domix.store import gather_modules

    for seed, parent in enumerate(("a", "b")):
        base, _ = load_causal(str(tiny_llama), "float32")
        torch.manual_seed(seed)
        get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False)).save_pretrained(
            tmp_path / parent / "adapter")
    a, b = str(tmp_path / "a" / "adapter"), str(tmp_path / "b" / "adapter")
    names = [{Path(m.path).parent.name: m.name for m in gather_modules(None, None, given)} for given in ([a, b], [b, a])]
    assert names[0] == names[1] == {"a": "adapter", "b": "adapter#2"}  # so the bridge's layout by name is one layout


def test_train_skip_draws_records_apart_from_a_sample_of_the_same_seed(data, tmp_path):
    """--train-skip N leaves out the first N of the seeded order (torch.randperm of --sample-seed + 1, as --train-limit
    draws): skip 0 and skip 20 of 20 records each are disjoint, and skip 0 of 40 is their union."""
    from domix.llm.data import read_examples
    from domix.llm.train import train_dev_examples

    every = read_examples(str(data["train"]), "train")
    order = torch.randperm(len(every), generator=torch.Generator().manual_seed(3 + 1)).tolist()

    def drawn(**kw):
        return sorted(e.input for e in train_dev_examples(cfg(data, tmp_path, sample_seed=3, **kw))[0])

    assert drawn(train_limit=20) == sorted(every[i].input for i in order[:20])
    assert drawn(train_limit=20, train_skip=20) == sorted(every[i].input for i in order[20:40])
    assert drawn(train_limit=40) == sorted(drawn(train_limit=20) + drawn(train_limit=20, train_skip=20))
    assert drawn(train_skip=60) == sorted(every[i].input for i in order[60:])
    with pytest.raises(DomixError, match="--train-skip 64 leaves none of the 64 training examples"):
        drawn(train_skip=64)


def test_several_train_files_train_together_and_one_stays_a_path(data, tmp_path):
    import argparse

    from domix.llm.train import train_dev_examples
    from domix.settings import add_setting_flags, build_config, flag_values

    other = instruction_data(tmp_path / "other.jsonl", 10, 5)
    both = train_dev_examples(cfg(data, tmp_path, train=[str(data["train"]), str(other)]))[0]
    assert [e.input for e in both] == [e.input for e in read_examples(str(data["train"]))] + [e.input for e in read_examples(str(other))]
    parser = argparse.ArgumentParser()
    add_setting_flags(parser, InstructConfig)
    common = ["--method", "lora", "--model", "m", "--out", "o"]
    one = build_config(InstructConfig, None, flag_values(parser.parse_args(common + ["--train", "a.jsonl"]), InstructConfig))
    two = build_config(InstructConfig, None, flag_values(parser.parse_args(common + ["--train", "a.jsonl", "--train", "b.jsonl"]),
                                                         InstructConfig))
    assert one.train == "a.jsonl" and two.train == ["a.jsonl", "b.jsonl"]  # one file is recorded as it always was


def test_gradient_checkpointing_gives_the_same_run(llama_store, data, tmp_path):
    seen = []
    plain = instruct(cfg(data, tmp_path / "plain", modules=str(llama_store), dtype="float64", epochs=1))
    ckpt = instruct(cfg(data, tmp_path / "ckpt", modules=str(llama_store), dtype="float64", epochs=1, gradient_checkpointing=True),
                    on_step=lambda task, step, loss, model: seen.append(getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing))
    assert seen and all(seen)
    assert [v for _, v in ckpt["loss_curve"]] == pytest.approx([v for _, v in plain["loss_curve"]], rel=1e-9)
    assert ckpt["dev_loss"] == pytest.approx(plain["dev_loss"], rel=1e-9)


def test_lora_and_dora_adapt_q_k_v_up_down_and_export_to_the_same_logits(tiny_llama, data, tmp_path):
    from transformers import AutoModelForCausalLM

    ids = torch.randint(3, 30, (3, 10))
    for method in ("lora", "dora"):
        record = instruct(cfg(data, tmp_path / method, model=str(tiny_llama), method=method, epochs=1, lora_rank=4, dtype="float64"))
        assert {n.rsplit(".", 1)[1] for n in record["layers"]} == {"q_proj", "k_proj", "v_proj", "up_proj", "down_proj"}
        assert len(record["layers"]) == 5 * 2 and record["lora_rank"] == 4
        model, _, _ = load_causal_task_model(tmp_path / method / "model")
        assert main(["export", str(tmp_path / method / "model"), str(tmp_path / f"{method}-plain")]) == 0
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / f"{method}-plain", dtype=torch.float64)
        with torch.no_grad():
            assert torch.allclose(plain(ids).logits, model(input_ids=ids).logits, atol=1e-8)


def test_folded_model_gives_the_same_logits_and_greedy_generations(llama_store, data, tmp_path):
    from transformers import AutoModelForCausalLM

    instruct(cfg(data, tmp_path / "run", modules=str(llama_store), dtype="float64", epochs=1))
    model, tok, record = load_causal_task_model(tmp_path / "run" / "model")
    export_causal(tmp_path / "run" / "model", tmp_path / "plain")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "plain", dtype=torch.float64)  # transformers alone
    assert type(plain).__module__.startswith("transformers.") and not bridged_layers(plain)
    ids = torch.randint(3, 30, (4, 12))
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, model(ids).logits, atol=1e-5, rtol=0)
    prompts = ["food pasta", "gene cell enzyme binds", "model"]
    ours = generate(model, tok, prompts, max_new_tokens=8, batch_size=2)
    assert generate(plain, tok, prompts, max_new_tokens=8, batch_size=2) == ours
    greedy = [plain.generate(torch.tensor([ids_of(tok, p)]), max_new_tokens=6, do_sample=False)[0].tolist() for p in prompts]
    assert greedy == [model.generate(torch.tensor([ids_of(tok, p)]), max_new_tokens=6, do_sample=False)[0].tolist() for p in prompts]
    assert all(len(g) > len(ids_of(tok, p)) for g, p in zip(greedy, prompts))  # something was generated to compare
    assert json.loads((tmp_path / "plain" / "domix_export.json").read_text())["template"] == "plain"


class Crash(Exception):
    pass


def test_interrupted_instruct_resumes_to_the_same_model(llama_store, data, tmp_path):
    reference = instruct(cfg(data, tmp_path / "reference", modules=str(llama_store), checkpoint_every=3))

    def crash(task, step, loss, model):
        if step == 11:  # in epoch 2, after the checkpoint at step 9
            raise Crash

    with pytest.raises(Crash):
        instruct(cfg(data, tmp_path / "run", modules=str(llama_store), checkpoint_every=3), on_step=crash)
    assert (tmp_path / "run" / "checkpoint" / "state.pt").is_file()
    resumed = instruct(cfg(data, tmp_path / "run", modules=str(llama_store), checkpoint_every=3))
    assert resumed["dev_history"] == reference["dev_history"] and resumed["loss_curve"] == reference["loss_curve"]
    a = load_file(str(tmp_path / "reference" / "model" / "task_model.safetensors"))
    b = load_file(str(tmp_path / "run" / "model" / "task_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(DomixError, match="holds a finished run"):
        instruct(cfg(data, tmp_path / "run", modules=str(llama_store), checkpoint_every=3))


def test_instruct_refuses_bad_settings(llama_store, tiny_llama, data, tmp_path):
    with pytest.raises(DomixError, match="pass --modules STORE"):
        instruct(cfg(data, tmp_path / "a"))
    with pytest.raises(DomixError, match="is not a LoRA module"):
        (tmp_path / "not-an-adapter").mkdir()
        instruct(cfg(data, tmp_path / "b", adapters=[str(tmp_path / "not-an-adapter")]))
    with pytest.raises(DomixError, match="match no linear layer"):
        instruct(cfg(data, tmp_path / "c", model=str(tiny_llama), method="lora", target_modules=["query"]))
    with pytest.raises(DomixError, match="holds no example"):
        instruct(cfg(data, tmp_path / "d", modules=str(llama_store), train=str(write_jsonl(tmp_path / "e.jsonl", []))))
    with pytest.raises(DomixError, match="non-finite loss"):
        instruct(cfg(data, tmp_path / "f", modules=str(llama_store), lr=1e30, p_init=1e30))
    assert main(["instruct", "--train", str(data["train"]), "--out", str(tmp_path / "g")]) == 2


# ---------------------------------------------------------------- multiple-choice evaluation

def test_loglikelihood_equals_a_hand_computation_and_acc_norm_divides_by_length(tiny_llama, tmp_path):
    model, tok = load_causal(str(tiny_llama), "float64")
    choices = ["gene", "pizza wine", "table price protein network"]
    _, questions = read_questions(write_jsonl(tmp_path / "q.jsonl", [{"context": "food pasta", "choices": choices, "label": 0}]))
    result = score_loglikelihood(model, tok, questions, batch_size=3)
    hand = []
    with torch.no_grad():
        for choice in choices:
            context, whole = ids_of(tok, "food pasta"), ids_of(tok, "food pasta " + choice)
            logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0], -1)
            hand.append(sum(float(logprobs[t - 1, whole[t]]) for t in range(len(context), len(whole))))
    assert result["details"][0]["loglikelihoods"] == pytest.approx(hand, abs=1e-10)
    pred = max(range(3), key=lambda i: hand[i])
    pred_norm = max(range(3), key=lambda i: hand[i] / len(choices[i]))
    assert pred != pred_norm  # one token costs more per character than four: the length matters
    assert (result["acc"], result["acc_norm"]) == (float(pred == 0), float(pred_norm == 0))


def test_public_formats_read_as_lm_eval_and_llm_adapters_write_them(tmp_path):
    rows = {
        "boolq": {"question": "is food good", "passage": "It is.", "answer": True},
        "piqa": {"goal": "eat", "sol1": "fork", "sol2": "hammer", "label": 0},
        "siqa": {"context": "Ann ate.", "question": "Why?", "answerA": "hungry", "answerB": "sad", "answerC": "bored", "label": "1"},
        "hellaswag": {"activity_label": "Cooking", "ctx_a": "He cuts.", "ctx_b": "then he", "endings": ["eats [title] it", "x", "y", "z"], "label": "0"},
        "winogrande": {"sentence": "Ann gave Bea food because _ was hungry.", "option1": "Ann", "option2": "Bea", "answer": "2"},
        "arc": {"question": "What?", "choices": {"text": ["a", "b", "c", "d"], "label": ["1", "2", "3", "4"]}, "answerKey": "3"},
        "openbookqa": {"question_stem": "Sun is", "choices": {"text": ["hot", "cold"], "label": ["A", "B"]}, "answerKey": "A"},
    }
    read = {name: read_questions(write_jsonl(tmp_path / f"{name}.jsonl", [row])) for name, row in rows.items()}
    assert {name: fmt for name, (fmt, _) in read.items()} == {name: name for name in rows}
    q = {name: qs[0] for name, (_, qs) in read.items()}
    assert (q["boolq"].contexts[0], q["boolq"].continuations, q["boolq"].label) == ("It is.\nQuestion: is food good?\nAnswer:", [" no", " yes"], 1)
    assert q["boolq"].keywords == ["false", "true"]
    assert q["siqa"].label == 0 and q["siqa"].contexts[0] == "Q: Ann ate. Why?\nA:"
    assert q["hellaswag"].contexts[0] == "Cooking: He cuts. Then he" and q["hellaswag"].continuations[0] == " eats. it"
    assert q["winogrande"].contexts == ["Ann gave Bea food because Ann", "Ann gave Bea food because Bea"]
    assert q["winogrande"].continuations == [" was hungry."] * 2 and q["winogrande"].label == 1
    assert q["arc"].label == 2 and q["arc"].contexts[0] == "Question: What?\nAnswer:"
    assert q["openbookqa"].label == 0 and q["openbookqa"].contexts[0] == "Sun is"
    assert q["piqa"].instruction == ("Please choose the correct solution to the question: eat\n\nSolution1: fork\n\n"
                                     "Solution2: hammer\n\nAnswer format: solution1/solution2")
    assert instruction_rows([q["piqa"]])[0]["output"] == "the correct answer is solution1"


def test_bad_choice_files_are_refused(tmp_path):
    with pytest.raises(DomixError, match="holds no question"):
        read_questions(write_jsonl(tmp_path / "empty.jsonl", []))
    with pytest.raises(DomixError, match=r"out of range for 3 choices"):
        read_questions(write_jsonl(tmp_path / "range.jsonl", [{"context": "c", "choices": ["a", "b", "c"], "label": 3}]))
    with pytest.raises(DomixError, match=r"siqa.jsonl:2 has no 'answerC' field"):
        read_questions(write_jsonl(tmp_path / "siqa.jsonl", [
            {"context": "c", "question": "q", "answerA": "a", "answerB": "b", "answerC": "c", "label": "1"},
            {"context": "c", "question": "q", "answerA": "a", "answerB": "b", "label": "1"}]))
    with pytest.raises(DomixError, match="cannot tell the task format"):
        read_questions(write_jsonl(tmp_path / "odd.jsonl", [{"q": 1}]))
    with pytest.raises(DomixError, match="answerKey 'E' is not one of"):
        read_questions(write_jsonl(tmp_path / "arc.jsonl", [{"question": "q", "choices": {"text": ["a"], "label": ["A"]}, "answerKey": "E"}]))


def test_instruct_scores_choice_test_files_as_eval_choice_scores_the_saved_model(tiny_llama, data, tmp_path, capsys):
    """--choice-test: the trained model scored at the end in both protocols, the numbers eval-choice gives the saved model
    (so the kept epoch is what is scored), each question's answer kept; a selection run reads no file; a bad file fails
    before any training."""
    rows = [{"goal": "food pasta", "sol1": "pizza", "sol2": "gene cell", "label": i % 2} for i in range(6)]
    piqa = write_jsonl(tmp_path / "piqa.jsonl", rows)
    settings = dict(model=str(tiny_llama), method="lora", epochs=2, lora_rank=2, dtype="float64")
    record = instruct(cfg(data, tmp_path / "run", choice_tests={"mini": str(piqa)}, choice_beams=2, **settings))
    report = evaluate_choice(str(tmp_path / "run" / "model"), {"mini": str(piqa)}, device="cpu", max_new_tokens=32, num_beams=2)
    assert record["choice_test"]["results"] == report["results"] and record["choice_test"]["template"] == "plain"
    assert record["choice_test"]["generation"]["num_beams"] == 2
    details = json.loads((tmp_path / "run" / "choice_details.json").read_text())
    kept = record["choice_predictions"]
    assert kept["mini/generate"]["predicted"] == [d["prediction"] for d in details["mini/generate"]]
    assert kept["mini/loglikelihood"]["gold"] == [r["label"] for r in rows]
    value = {(r["protocol"], r["metric"]): r["value"] for r in report["results"]}
    norm = kept["mini/loglikelihood"]
    assert value[("loglikelihood", "acc_norm")] == sum(p == g for p, g in zip(norm["predicted_norm"], norm["gold"])) / 6
    assert "loglikelihood" in capsys.readouterr().out  # the table, as eval-choice prints it

    selection = instruct(cfg(data, tmp_path / "sel", choice_tests={"mini": str(tmp_path / "absent.jsonl")}, score_test=False,
                             **settings))
    assert "choice_test" not in selection and not (tmp_path / "sel" / "choice_details.json").exists()
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"q": 1}])
    with pytest.raises(DomixError, match="cannot tell the task format"):
        instruct(cfg(data, tmp_path / "bad", choice_tests={"odd": str(odd)}, **settings))
    assert not (tmp_path / "bad" / "run.json").exists()


def test_extractor_takes_the_first_answer_keyword_as_llm_adapters_does():
    assert extract_answer(" the correct answer is solution2", ["solution1", "solution2"]) == 1
    assert extract_answer("The correct answer is answer3.\n\n### Instruction: answer1", [f"answer{i}" for i in range(1, 6)]) == 2
    assert extract_answer("false, because the passage says otherwise; true only in 1990", ["false", "true"]) == 0
    assert extract_answer("the correct answer is ending4 (not ending1)", ["ending1", "ending2", "ending3", "ending4"]) == 3
    assert extract_answer("option2", ["option1", "option2"]) == 1
    assert extract_answer("Answer2", ["answer1", "answer2"]) is None  # case-sensitive, as the scripts are
    assert extract_answer("I do not know.", ["answer1", "answer2"]) is None


def test_eval_choice_names_the_protocol_of_every_number(tiny_llama, tmp_path):
    rows = [{"goal": "food pasta", "sol1": "pizza", "sol2": "gene cell", "label": i % 2} for i in range(4)]
    task = write_jsonl(tmp_path / "piqa.jsonl", rows)
    assert main(["eval-choice", str(tiny_llama), "--task", f"mini={task}", "--out", str(tmp_path / "r.json"),
                 "--details", str(tmp_path / "d.json"), "--max-new-tokens", "4", "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert {(r["protocol"], r["metric"]) for r in report["results"]} == {
        ("loglikelihood", "acc"), ("loglikelihood", "acc_norm"), ("generate", "acc"), ("generate", "unanswered")}
    assert set(report["protocols"]) == {"loglikelihood", "generate"} and all(r["n"] == 4 and r["format"] == "piqa" for r in report["results"])
    details = json.loads((tmp_path / "d.json").read_text())
    gen = details["mini/generate"]
    assert len(gen) == 4 and all(len(d["output"].split()) <= 4 for d in gen)
    value = {(r["protocol"], r["metric"]): r["value"] for r in report["results"]}
    assert value[("generate", "acc")] == sum(d["prediction"] == d["label"] for d in gen) / 4
    ll = details["mini/loglikelihood"]
    assert value[("loglikelihood", "acc")] == sum(max(range(2), key=lambda i: d["loglikelihoods"][i]) == d["label"] for d in ll) / 4
    loglik_only = evaluate_choice(str(tiny_llama), {"mini": str(task)}, ("loglikelihood",), device="cpu")
    assert [r["value"] for r in loglik_only["results"]] == [value[("loglikelihood", "acc")], value[("loglikelihood", "acc_norm")]]
    assert main(["eval-choice", str(tiny_llama), "--task", f"x={tmp_path / 'none.jsonl'}"]) == 2


def tiny_choice_task(tmp_path: Path, name: str) -> Path:
    """12 three-way questions in a jsonl file, and an lm-evaluation-harness task ``name`` over it in tmp_path/tasks."""
    rng = random.Random(0)
    rows = [{"context": " ".join(rng.choice(WORDS) for _ in range(3)),
             "choices": [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))) for _ in range(3)], "label": i % 3} for i in range(12)]
    task_file = write_jsonl(tmp_path / "tiny.jsonl", rows)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: " + str(task_file) + "\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    return task_file


def test_a_composed_model_runs_in_lm_evaluation_harness_with_our_scores(llama_store, data, tmp_path):
    pytest.importorskip("lm_eval")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from domix.llm.harness import harness_model

    instruct(cfg(data, tmp_path / "run", modules=str(llama_store), epochs=1))
    task_file = tiny_choice_task(tmp_path, "domix_tiny_choice")
    lm = harness_model(str(tmp_path / "run" / "model"), batch_size=4)
    assert bridged_layers(lm.model)
    out = simple_evaluate(model=lm, tasks=["domix_tiny_choice"], task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False))
    theirs = out["results"]["domix_tiny_choice"]
    model, tok, _ = load_causal_task_model(tmp_path / "run" / "model")
    ours = score_loglikelihood(model, tok, read_questions(task_file)[1])
    assert theirs["acc,none"] == pytest.approx(ours["acc"]) and theirs["acc_norm,none"] == pytest.approx(ours["acc_norm"])


def test_an_exported_model_has_a_model_card_and_runs_in_lm_eval_s_own_command(llama_store, data, tmp_path):
    pytest.importorskip("lm_eval")
    import subprocess
    import sys

    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer

    instruct(cfg(data, tmp_path / "run", modules=str(llama_store), epochs=1))
    exported = tmp_path / "exported"
    assert main(["export", str(tmp_path / "run" / "model"), str(exported)]) == 0
    card = ModelCard.load(exported / "README.md")  # huggingface_hub reads it as a model card: metadata and text
    record = json.loads((tmp_path / "run" / "model" / "domix_task.json").read_text())
    assert card.data.pipeline_tag == "text-generation" and card.data.library_name == "transformers"
    assert set(card.data.tags) == {"domix", record["method"]}
    assert "Method: `domix`, DoMIX" in card.text and record["base_model"]["fingerprint"] in card.text
    assert '"lr": 0.02' in card.text and '"template": "plain"' in card.text  # the run's settings

    task_file = tiny_choice_task(tmp_path, "domix_tiny_export")
    # lm-evaluation-harness's own command line, its transformers backend (--model hf) on the exported folder
    done = subprocess.run([sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={exported}",
                           "--tasks", "domix_tiny_export", "--include_path", str(tmp_path / "tasks"), "--device", "cpu",
                           "--batch_size", "4", "--output_path", str(tmp_path / "lm_eval")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = json.loads(next((tmp_path / "lm_eval").rglob("results*.json")).read_text())["results"]["domix_tiny_export"]
    plain = AutoModelForCausalLM.from_pretrained(exported).eval()
    ours = score_loglikelihood(plain, AutoTokenizer.from_pretrained(exported), read_questions(task_file)[1])
    assert theirs["acc,none"] == pytest.approx(ours["acc"])


def test_generate_with_beams_is_transformers_beam_search_and_is_recorded(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float64).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    prompts = ["food pasta", "gene cell enzyme binds"]
    beams = generate(model, tok, prompts, max_new_tokens=6, batch_size=1, num_beams=3)
    for prompt, text in zip(prompts, beams):
        ids = torch.tensor([tok(prompt)["input_ids"]])
        reference = model.generate(ids, max_new_tokens=6, do_sample=False, num_beams=3, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
        assert text == tok.decode(reference, skip_special_tokens=True)
    rows = [{"goal": "food pasta", "sol1": "pizza", "sol2": "gene cell", "label": i % 2} for i in range(2)]
    task = write_jsonl(tmp_path / "piqa.jsonl", rows)
    assert main(["eval-choice", str(tiny_llama), "--task", f"mini={task}", "--protocol", "generate", "--num-beams", "4",
                 "--max-new-tokens", "4", "--out", str(tmp_path / "r.json"), "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["generation"] == {"num_beams": 4, "max_new_tokens": 4, "do_sample": False}
    assert main(["eval-choice", str(tiny_llama), "--task", f"mini={task}", "--num-beams", "0", "--device", "cpu"]) == 2


def test_batched_generations_come_back_in_the_prompts_order(tiny_llama):
    """Batches are formed by length (the longest prompt first here would share a batch with the shortest otherwise);
    each text is transformers' greedy continuation of its own prompt alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float64).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    prompts = ["gene cell enzyme binds inhibits model", "food", "table price protein", "the food service"]
    texts = generate(model, tok, prompts, max_new_tokens=5, batch_size=2)
    for prompt, text in zip(prompts, texts):
        ids = torch.tensor([tok(prompt)["input_ids"]])
        alone = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
        assert text == tok.decode(alone, skip_special_tokens=True)


def test_lora_fa_and_cat_instruct_train_only_b(llama_store, tiny_llama, data, tmp_path):
    """The ablations of the LLM setting: lora_fa keeps PEFT's random A (B trains), cat keeps the bridge at I."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    fa = instruct(cfg(data, tmp_path / "fa", model=str(tiny_llama), method="lora_fa", epochs=1, lora_rank=4, seed=5))
    saved = load_file(str(tmp_path / "fa" / "model" / "adapter_model.safetensors"))
    torch.manual_seed(5)  # PEFT's own initialisation with the run's seed: the A lora_fa must still hold
    reference = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                               LoraConfig(r=4, lora_alpha=8, target_modules=sorted({n.rsplit(".", 1)[1] for n in fa["layers"]})))
    initial = {k.replace(".default", ""): v for k, v in reference.state_dict().items() if ".lora_A." in k}
    assert initial and all(torch.equal(saved[k], initial[k]) for k in initial)
    assert fa["trainable_parameters"] == sum(v.numel() for k, v in saved.items() if ".lora_B." in k)
    cat = instruct(cfg(data, tmp_path / "cat", modules=str(llama_store), method="cat", epochs=1))
    weights = load_file(str(tmp_path / "cat" / "model" / "task_model.safetensors"))
    bridges = [v for k, v in weights.items() if k.endswith(".bridge")]
    assert bridges and all(torch.equal(b, torch.eye(6)) for b in bridges)
    assert cat["trainable_parameters"] == sum(v.numel() for k, v in weights.items() if k.endswith(".lora_B"))


def test_instruct_records_retention_on_general_text_as_transformers_computes_it(tiny_llama, corpora, data, tmp_path):
    """--general: the LM loss on general text of the base and of the tuned model, each what transformers' own
    loss gives on the same sequences (the reference), and a change that is their difference."""
    from transformers import AutoModelForCausalLM

    from domix.base_model import load_tokenizer
    from domix.llm.model import load_causal_task_model
    from domix.retention import general_blocks

    record = instruct(cfg(data, tmp_path / "run", model=str(tiny_llama), method="lora", general=str(corpora["bio"]),
                          general_blocks=6, max_length=16, epochs=2, dtype="float64"))
    kept = record["retention"]
    assert kept["sequences"] == 6 and kept["seq_len"] == 16 and kept["objective"] == "clm"
    tokenizer, _ = load_tokenizer(str(tiny_llama))
    blocks = general_blocks(str(corpora["bio"]), tokenizer, "clm", 16, 6)

    def hf_loss(model) -> float:
        with torch.no_grad():
            return model(input_ids=blocks, labels=blocks).loss.item()

    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float64).eval()
    tuned, _, _ = load_causal_task_model(tmp_path / "run" / "model")
    assert kept["lm_loss_base"] == pytest.approx(hf_loss(base), abs=1e-5)
    assert kept["lm_loss_after"] == pytest.approx(hf_loss(tuned.double()), abs=1e-5)
    assert kept["change"] == pytest.approx(kept["lm_loss_after"] - kept["lm_loss_base"], abs=1e-6) and kept["change"] != 0
    assert instruct(cfg(data, tmp_path / "plain", model=str(tiny_llama), method="lora", epochs=1))["retention"] is None


def test_padding_to_a_multiple_changes_no_loss(tiny_llama, data, tmp_path):
    """--pad-multiple: batches as wide as a multiple of N tokens, their padding masked: the loss of every batch is the
    unpadded one's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from domix.lm_loss import lm_losses

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), AutoTokenizer.from_pretrained(tiny_llama)
    rows, _ = encode_examples(read_examples(data["train"])[:6], tokenizer, "alpaca", 128)
    plain, padded = collate(rows, tokenizer.pad_token_id), collate(rows, tokenizer.pad_token_id, 32)
    assert padded["input_ids"].shape[1] % 32 == 0 and padded["input_ids"].shape[1] >= plain["input_ids"].shape[1]
    with torch.no_grad():
        losses = [float(lm_losses(model, b["input_ids"], b["labels"], "clm", attention_mask=b["attention_mask"])[0]) for b in (plain, padded)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    record = instruct(cfg(data, tmp_path / "run", method="lora", model=str(tiny_llama), epochs=1, pad_multiple=64, save_model=False))
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["pad_multiple"] == 64 and record["steps"] > 0
