"""A labelled task as instructions (domix instruct --task): the label words' log-likelihood against a hand computation
with transformers, inputs cut so that every label is scored whole, the generated answer read as a label or as none,
and end to end: dev macro-F1 picks the kept epoch, the test split scored in both protocols, or left unread."""

import json
import shutil

import pytest
import torch

from domix.cli import main
from domix.llm.config import InstructConfig
from domix.llm.data import Example, encode_example, prompt_text
from domix.llm.labelled import fitted, score_loglikelihood, scores, shared_prompt_scores, split_examples
from domix.llm.train import instruct
from domix.tasks import read_task

from conftest import WORDS, make_task


@pytest.fixture(scope="module")
def llama(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), AutoTokenizer.from_pretrained(tiny_llama)


def hand_loglikelihood(model, tokenizer, example: Example, label: str) -> float:
    """log p(label tokens, EOS | the alpaca prompt), one unpadded sequence, by hand."""
    prompt = tokenizer(prompt_text(example.instruction, example.input, "alpaca", tokenizer))["input_ids"]
    response = tokenizer(label, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + response])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(float(logprobs[len(prompt) + i - 1, token]) for i, token in enumerate(response))


def test_label_loglikelihoods_equal_a_hand_computation_whatever_the_padding(llama, task):
    model, tokenizer = llama
    labelled = read_task(task)
    examples = split_examples(labelled.splits["test"], labelled.labels)[:5]
    got = score_loglikelihood(model, tokenizer, examples, labelled.labels, "alpaca", 128, device="cpu")
    assert got.shape == (5, 3)
    for i, example in enumerate(examples):
        for j, label in enumerate(labelled.labels):
            assert float(got[i, j]) == pytest.approx(hand_loglikelihood(model, tokenizer, example, label), abs=1e-6)
    # the instruction lists the labels; the input is the text; the response the label word
    assert examples[0].instruction == "Classify the input. Answer with exactly one of these labels: bio, cs, food."
    assert examples[0].input == labelled.splits["test"].texts[0] and examples[0].output == labelled.splits["test"].labels[0]


def test_a_text_pair_follows_the_text_and_a_long_input_is_cut_so_every_label_fits(llama, tmp_path):
    model, tokenizer = llama
    folder = make_task(tmp_path / "pairs", pairs=True)
    pairs = read_task(folder)
    example = split_examples(pairs.splits["train"], pairs.labels, "Which topic? {labels}")[0]
    assert example.instruction == "Which topic? bio, cs, food"
    assert example.input == f"{pairs.splits['train'].texts[0]}\n{pairs.splits['train'].pairs[0]}"

    long = Example(example.instruction, " ".join(WORDS[i % len(WORDS)] for i in range(300)), "food")
    cut = fitted(long, pairs.labels, tokenizer, "alpaca", 96)
    assert len(cut.input) < len(long.input) and long.input.startswith(cut.input.rstrip())
    for label in pairs.labels:  # each label's whole response (and EOS) is inside max_length
        ids, labels = encode_example(Example(cut.instruction, cut.input, label), tokenizer, "alpaca", 96)
        assert len(ids) <= 96 and labels[-1] == tokenizer.eos_token_id
    rows = [encode_example(Example(cut.instruction, cut.input, label), tokenizer, "alpaca", 96) for label in pairs.labels]
    assert shared_prompt_scores(model, rows, tokenizer.pad_token_id, "cpu") == pytest.approx(
        [hand_loglikelihood(model, tokenizer, cut, label) for label in pairs.labels], abs=1e-6)


def test_an_answer_that_is_no_label_counts_as_wrong_and_unanswered():
    gold = torch.tensor([0, 1, 2, 2])
    got = scores([0, None, 2, 1], gold, 3)
    assert got["accuracy"] == 0.5 and got["unanswered"] == 0.25
    # macro-F1 by hand: class 0: tp 1 -> 1.0; class 1: fp 1, fn 1 -> 0; class 2: tp 1, fn 1 -> 2/3
    assert got["macro_f1"] == pytest.approx((1 + 0 + 2 / 3) / 3)


def run_config(tiny_llama, task, out, **kw) -> InstructConfig:
    settings = dict(task=str(task), out=str(out), method="lora", model=str(tiny_llama), lora_rank=4, epochs=3, lr=5e-3,
                    batch_size=16, max_length=64, seed=1, save_model=False, eval_limit=24)
    return InstructConfig(**{**settings, **kw})


def test_instruct_on_a_labelled_task_keeps_the_best_dev_epoch_and_scores_test_both_ways(tiny_llama, task, tmp_path):
    record = instruct(run_config(tiny_llama, task, tmp_path / "run"))
    history = record["dev_history"]
    assert len(history) == 3 and all({"loss", "accuracy", "macro_f1", "micro_f1"} <= set(h) for h in history)
    best = max(range(3), key=lambda i: (history[i]["macro_f1"], -i))  # the first of equal scores is kept
    assert record["best_epoch"] == best + 1 and record["dev"]["macro_f1"] == history[best]["macro_f1"]
    assert record["labels"] == ["bio", "cs", "food"] and record["task"] == task.name
    predicted, gold = record["test_predictions"]["predicted"], record["test_predictions"]["gold"]
    assert len(predicted) == len(gold) == 24
    assert record["test"]["accuracy"] == pytest.approx(sum(p == g for p, g in zip(predicted, gold)) / 24)
    generated = record["generate_predictions"]
    assert len(generated["outputs"]) == 24 and all(p is None or 0 <= p < 3 for p in generated["predicted"])
    assert record["test_generate"]["unanswered"] == pytest.approx(sum(p is None for p in generated["predicted"]) / 24)
    majority = record["majority"]  # the training split's most frequent label, answered always
    assert majority["test"]["accuracy"] == pytest.approx(gold.count(majority["label"]) / 24)
    assert set(record["time_s"]) == {"setup", "train", "dev", "test", "retention"} and record["time_s"]["test"] > 0
    assert json.loads((tmp_path / "run" / "result.json").read_text())["test"] == record["test"]


def test_a_selection_run_never_reads_the_test_split(tiny_llama, task, tmp_path, capsys):
    own = tmp_path / "task"
    shutil.copytree(task, own)
    (own / "test.jsonl").write_text("this is not json\n")
    record = instruct(run_config(tiny_llama, own, tmp_path / "run", epochs=1, score_test=False))
    assert record["test"] is None and record["test_predictions"] is None and record["test_generate"] is None
    assert "test" not in record["majority"] and record["dev"]["macro_f1"] >= 0
    assert "test not read" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "run.json").read_text())["test"] is None


@pytest.mark.parametrize("flags, message", [
    (["--train", "x.jsonl"], "--task reads the task folder's train and dev splits; drop --train and --dev"),
    (["--eval-limit", "5"], None),
    (["--no-score-test"], None),
])
def test_labelled_task_flags_are_checked(tiny_llama, task, tmp_path, capsys, flags, message):
    base = ["instruct", "--model", str(tiny_llama), "--method", "lora", "--out", str(tmp_path / "o")]
    if message:
        assert main(base + ["--task", str(task)] + flags) == 2
    else:  # without a task
        assert main(base + ["--train", str(task / "train.jsonl")] + flags) == 2
        message = ("--task-instruction and --eval-limit apply to a labelled task; pass --task FOLDER" if "--eval-limit" in flags else
                   "--no-score-test leaves a test unread, and this run has none; pass --task FOLDER or --choice-test NAME=FILE")
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "o").exists()


def test_instruct_starts_a_lora_from_one_module_of_a_store(tiny_llama, llama_store, task, tmp_path):
    """--init-module, as finetune has it (compare's lora_module row on an instruction task): the module's rank, its
    trained pairs as the start; a method without a LoRA start refuses it in one line."""
    from safetensors.torch import load_file

    record = instruct(run_config(tiny_llama, task, tmp_path / "run", epochs=1, lora_rank=None, modules=str(llama_store),
                                 init_module="food", model=None, save_model=True))
    assert record["init_module"] == "food" and record["lora_rank"] == 4  # the food module's rank (bio's is 2)
    start = load_file(str(llama_store / "food" / "adapter_model.safetensors"))
    trained = load_file(str(tmp_path / "run" / "model" / "adapter_model.safetensors"))
    started = {k.split("base_model.model.")[-1].split(".lora_A")[0] for k in start if ".lora_A." in k}
    adapted = {k.split("base_model.model.")[-1].split(".lora_A")[0] for k in trained if ".lora_A." in k}
    assert started and adapted == started  # the module's layers, at its rank
    assert all(v.shape[0] == 4 for k, v in trained.items() if ".lora_A." in k)
    assert main(["instruct", "--task", str(task), "--method", "domix", "--modules", str(llama_store), "--init-module", "food",
                 "--out", str(tmp_path / "x")]) == 2


@pytest.mark.parametrize("method", ["domix", "mode"])
def test_the_shared_prompt_cache_scores_as_whole_sequences_through_composed_models(tiny_llama, llama_store, corpora, task, tmp_path,
                                                                                   method):
    """The prompt's key/value cache serves every label: through the bridge's layers and through MoDE's expert blocks (whose
    experts keep caches of their own) each label scores as the whole sequence run without a cache, by hand."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), AutoTokenizer.from_pretrained(tiny_llama)
    if method == "domix":
        from domix.methods.bridge import BridgeConfig, compose
        from domix.store import load_store

        compose(model, load_store(llama_store), BridgeConfig())
        bridged = [m for m in model.modules() if hasattr(m, "bridge") and hasattr(m, "lora_B")]
        assert bridged
        with torch.no_grad():  # a trained-looking bridge and B, so the modules' path weighs in every layer
            for layer in bridged:
                layer.bridge.add_(0.3 * torch.randn_like(layer.bridge))
                layer.lora_B.normal_(0, 0.2)
    else:
        from domix.methods.mode import stage1_model
        from domix.pretraining.config import PretrainConfig
        from domix.pretraining.run import pretrain

        store = tmp_path / "mode"
        pretrain(PretrainConfig(model=str(tiny_llama), domains={"food": str(corpora["food"])}, out=str(store), method="mode",
                                mode_block_size=1, steps=3, batch_size=8, seq_len=32, lr=1e-2, heldout_max_blocks=2))
        context = stage1_model(model, store / "food")
        context.__enter__()
    labelled = read_task(task)
    examples = split_examples(labelled.splits["test"], labelled.labels)[:3]
    got = score_loglikelihood(model, tokenizer, examples, labelled.labels, "alpaca", 128, device="cpu")
    for i, example in enumerate(examples):
        for j, label in enumerate(labelled.labels):
            assert float(got[i, j]) == pytest.approx(hand_loglikelihood(model, tokenizer, example, label), abs=1e-6)


def test_the_base_row_scores_the_model_as_it_is(tiny_llama, task, tmp_path):
    """--method base: nothing trains; dev is scored once (epoch 0) and test as for any run, the model untouched: its test
    answers are the untrained model's, by hand."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    record = instruct(run_config(tiny_llama, task, tmp_path / "run", method="base", lora_rank=None))
    assert record["steps"] == 0 and record["trainable_parameters"] == 0 and record["best_epoch"] == 1
    assert len(record["dev_history"]) == 1 and record["dev_history"][0]["epoch"] == 0
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), AutoTokenizer.from_pretrained(tiny_llama)
    from domix.llm.labelled import read_labelled

    labelled = read_labelled(str(task), None, None, 24, 0, True)
    labelled.fit(tokenizer, "alpaca", 64)  # as the run prepares its examples
    by_hand = score_loglikelihood(model, tokenizer, labelled.examples["test"], labelled.labels, "alpaca", 64, "cpu").argmax(1)
    assert record["test_predictions"]["predicted"] == by_hand.tolist()
    with pytest.raises(SystemExit) as refused:  # a classifier has no base row: the flag's choices leave it out
        main(["finetune", "--method", "base", "--task", str(task), "--model", str(tiny_llama), "--out", str(tmp_path / "f")])
    assert refused.value.code == 2
