"""domix instruct's speed settings, as domix finetune has them: bfloat16 autocast of the passes that train and score (not
of retention, a fixed yardstick), and length-grouped batches; each step's loss against transformers' own loss on the
batch the step should have drawn."""

import json

import pytest
import torch

import domix.llm.train as train_module
from domix.engine.loop import batch_rows, grouped_batch_rows
from domix.llm.config import InstructConfig
from domix.llm.train import dev_loss, instruct, prepare


def settings(tmp_path, tiny_llama, task, **kw) -> InstructConfig:
    base = dict(task=str(task), model=str(tiny_llama), method="lora", out=str(tmp_path / "run"), template="plain", epochs=1,
                batch_size=8, lr=1e-12, max_length=48, save_model=False, seed=3)  # a learning rate that leaves the model as it is
    return InstructConfig(**{**base, **kw})


def hf_losses(cfg: InstructConfig, draw, steps: int, mixed: bool) -> list[float]:
    """transformers' own loss (labels=, its mean over the response tokens) on the batch ``draw(step)`` picks of the run's
    training rows, on the untrained base: the reference each step's loss is held to."""
    from transformers import AutoModelForCausalLM

    from domix.llm.data import collate

    run = prepare(cfg)
    rows, pad_id = run["train"], run["tokenizer"].pad_token_id
    model = AutoModelForCausalLM.from_pretrained(cfg.model).eval()
    out = []
    for step in range(steps):
        batch = collate([rows[i] for i in draw(rows, step)], pad_id)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
            out.append(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss.item())
    return out


def test_grouped_batches_train_on_the_rows_grouped_batch_rows_draws(tmp_path, tiny_llama, task):
    cfg = settings(tmp_path, tiny_llama, task, group_by_length=True)
    losses = []
    instruct(cfg, on_step=lambda _label, _step, loss, _model: losses.append(loss))
    lengths = lambda rows: [len(ids) for ids, _ in rows]  # noqa: E731
    grouped = hf_losses(cfg, lambda rows, s: grouped_batch_rows(lengths(rows), 8, cfg.seed, s).tolist(), len(losses), False)
    plain = hf_losses(cfg, lambda rows, s: batch_rows(len(rows), 8, cfg.seed, s).tolist(), len(losses), False)
    assert len(losses) >= 4 and losses == pytest.approx(grouped, abs=1e-5)
    assert max(abs(a - b) for a, b in zip(losses, plain)) > 1e-3  # the random draw's batches are other batches


def test_autocast_runs_the_training_and_scoring_passes_in_bf16_and_retention_in_float32(tmp_path, tiny_llama, task, corpora,
                                                                                        monkeypatch):
    seen = {}

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            seen.setdefault(name, set()).add(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            return fn(*args, **kwargs)
        monkeypatch.setattr(train_module, name, wrapped)

    for name in ("lm_losses", "mean_loss", "score_loglikelihood", "generated_labels", "retention"):
        spy(name, getattr(train_module, name))
    cfg = settings(tmp_path, tiny_llama, task, autocast="bfloat16", general=str(corpora["bio"]), general_blocks=2)
    losses = []
    record = instruct(cfg, on_step=lambda _label, _step, loss, _model: losses.append(loss))
    assert seen == {"lm_losses": {torch.bfloat16}, "mean_loss": {torch.bfloat16}, "score_loglikelihood": {torch.bfloat16},
                    "generated_labels": {torch.bfloat16}, "retention": {None}}
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["autocast"] == "bfloat16"
    assert record["test"] is not None and record["retention"]["change"] == pytest.approx(0, abs=1e-6)
    # each step's loss is transformers' own under the same autocast, within bf16's rounding (not float32's exactness)
    monkeypatch.undo()
    reference = hf_losses(cfg, lambda rows, s: batch_rows(len(rows), 8, cfg.seed, s).tolist(), len(losses), True)
    assert losses == pytest.approx(reference, rel=1e-2)


def test_dev_loss_is_the_mean_over_response_tokens_whatever_the_batching(tiny_llama, task, tmp_path):
    """Length-sorted dev batches: the same mean loss per response token as one batch of every row (transformers' own)."""
    from transformers import AutoModelForCausalLM

    from domix.llm.data import collate

    run = prepare(settings(tmp_path, tiny_llama, task))
    rows, pad_id = run["dev"], run["tokenizer"].pad_token_id
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    whole = collate(rows, pad_id)
    with torch.no_grad():
        reference = model(input_ids=whole["input_ids"], attention_mask=whole["attention_mask"], labels=whole["labels"]).loss.item()
    assert dev_loss(model, rows, pad_id, 3, "cpu") == pytest.approx(reference, abs=1e-5)


def test_the_speed_benchmark_runs_instruct_variants_side_by_side(tmp_path, tiny_llama, task):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("finetune_speed", Path(__file__).parents[1] / "benchmarks" / "finetune_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--command", "instruct", "--task", str(task), "--method", "lora", "--model", str(tiny_llama), "--seeds", "1",
                      "--variants", "fp32", "bf16+grouped", "--set", "epochs=1", "max_length=48", "template=plain"])
    assert [r["variant"] for r in out["runs"]] == ["fp32", "bf16+grouped"] and out["settings"]["score_test"] is False
    assert all(r["train_s"] > 0 and r["dev_s"] > 0 and 0 <= r["dev_macro_f1"] <= 1 for r in out["runs"])


def test_a_labelled_tasks_dev_loss_read_off_the_label_scores_is_transformers_loss_on_the_dev_rows(tmp_path, tiny_llama, task):
    """The dev loss of a labelled task comes from the label-word scores (no second pass): on a model the run leaves as it
    is, every epoch's is transformers' own mean loss over the dev rows' response tokens, and equals the loss before."""
    from transformers import AutoModelForCausalLM

    from domix.llm.data import collate

    cfg = settings(tmp_path, tiny_llama, task, epochs=2)
    record = instruct(cfg)
    run = prepare(cfg)
    whole = collate(run["dev"], run["tokenizer"].pad_token_id)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    with torch.no_grad():
        reference = model(input_ids=whole["input_ids"], attention_mask=whole["attention_mask"], labels=whole["labels"]).loss.item()
    assert [h["loss"] for h in record["dev_history"]] == pytest.approx([reference] * 2, abs=1e-5)
    assert record["dev_loss_before"] == pytest.approx(reference, abs=1e-5)
