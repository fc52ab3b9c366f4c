"""benchmarks/bridge_parts.py on a tiny domix instruct run: each part's update norm and the model with a part of P
zeroed, against a reference built by hand (the base's weights plus B_i s_i P_ij A_j of the kept blocks, folded in
with the file's tensors, scored by transformers' own loss)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from test_llm import instruction_data

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("bridge_parts", ROOT / "benchmarks" / "bridge_parts.py")
parts = sys.modules[SPEC.name] = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(parts)


def test_masks_split_p_into_own_cross_and_fresh_blocks():
    masks = parts.part_masks([1, 2, 1], fresh=True)
    assert masks["fresh"].tolist() == [[1, 1, 1, 1], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]]
    assert masks["own"].tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]]
    assert masks["cross"].tolist() == [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1], [0, 1, 1, 0]]
    assert set(parts.part_masks([2, 2], fresh=False)) == {"own", "cross"}


def test_zeroed_parts_score_as_the_hand_folded_model(llama_store, tiny_llama, corpora, tmp_path, capsys):
    from domix.base_model import load_tokenizer
    from domix.llm.config import InstructConfig
    from domix.llm.train import instruct
    from domix.retention import general_blocks
    from transformers import AutoModelForCausalLM

    settings = dict(model=str(tiny_llama), modules=str(llama_store), method="domix", new_rank=2, out=str(tmp_path / "row"),
                    train=str(instruction_data(tmp_path / "train.jsonl", 48, 0)), dev=str(instruction_data(tmp_path / "dev.jsonl", 12, 1)),
                    template="plain", epochs=2, batch_size=8, lr=2e-2, max_length=16, warmup_ratio=0.0, dtype="float64",
                    general=str(corpora["bio"]), general_blocks=6)
    record = instruct(InstructConfig(**settings))
    config = tmp_path / "row.yaml"
    config.write_text(yaml.safe_dump(settings))
    assert parts.main([str(tmp_path / "row"), str(config), "--out", str(tmp_path / "parts.json")]) == 0
    assert "cross blocks zeroed" in capsys.readouterr().out
    table = json.loads((tmp_path / "parts.json").read_text())
    assert table["ranks"] == [2] + [m["rank"] for m in record["modules"]] and sorted(table["ranks"][1:]) == [2, 4]  # the fresh block first
    rows = {row["P"]: row for row in table["rows"]}
    assert list(rows) == ["as trained", "own blocks zeroed", "cross blocks zeroed", "fresh blocks zeroed"]
    assert rows["as trained"]["general_loss_change"] == pytest.approx(record["retention"]["change"], abs=1e-9)
    assert rows["as trained"]["dev_loss"] == pytest.approx(record["dev_loss"], abs=1e-9)

    # the reference: fold the kept blocks' update into the base's weights by hand and score with transformers' loss
    trained = load_file(str(tmp_path / "row" / "model" / "task_model.safetensors"))
    names = sorted({k.rsplit(".", 1)[0] for k in trained if k.endswith(".bridge")})
    tokenizer, _ = load_tokenizer(str(tiny_llama))
    blocks = general_blocks(str(corpora["bio"]), tokenizer, "clm", 16, 6)
    edges = torch.tensor([0] + table["ranks"]).cumsum(0).tolist()
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float64).eval()
    with torch.no_grad():
        base_loss = base(input_ids=blocks, labels=blocks).loss.item()
    for zeroed, keep in [("own", lambda i, j: i == 0 or j == 0 or i != j), ("cross", lambda i, j: i == 0 or j == 0 or i == j),
                         ("fresh", lambda i, j: i != 0 and j != 0)]:
        model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float64).eval()
        weights, norm = dict(model.named_parameters()), 0.0
        with torch.no_grad():
            for name in names:
                A, P, B = trained[name + ".lora_A"], trained[name + ".bridge"], trained[name + ".lora_B"] * trained[name + ".scales"]
                kept = sum(B[:, edges[i]:edges[i + 1]] @ P[edges[i]:edges[i + 1], edges[j]:edges[j + 1]] @ A[edges[j]:edges[j + 1]]
                           for i in range(3) for j in range(3) if keep(i, j))
                weights[name + ".weight"].add_(kept)
                norm += float(((B @ P @ A) - kept).norm() ** 2)
            loss = model(input_ids=blocks, labels=blocks).loss.item()
        row = rows[f"{zeroed} blocks zeroed"]
        assert row["general_loss_change"] == pytest.approx(loss - base_loss, abs=1e-6), zeroed
        assert row["update_norm"] == pytest.approx(norm ** 0.5, rel=1e-6), zeroed
        assert row["general_loss_change"] != pytest.approx(rows["as trained"]["general_loss_change"], abs=1e-9)


def test_a_row_without_a_bridge_or_settings_is_one_line_and_exit_2(tiny_llama, corpora, tmp_path, capsys):
    from domix.llm.config import InstructConfig
    from domix.llm.train import instruct

    settings = dict(model=str(tiny_llama), method="lora", out=str(tmp_path / "row"), train=str(instruction_data(tmp_path / "t.jsonl", 16, 0)),
                    dev=str(instruction_data(tmp_path / "d.jsonl", 4, 1)), template="plain", epochs=1, batch_size=8, max_length=16,
                    general=str(corpora["bio"]))
    instruct(InstructConfig(**settings))
    (tmp_path / "row.yaml").write_text(yaml.safe_dump(settings))
    for config, message in [(tmp_path / "row.yaml", "holds no bridge"), (tmp_path / "none.yaml", "does not exist")]:
        assert parts.main([str(tmp_path / "row"), str(config)]) == 2
        err = capsys.readouterr().err.strip()  # after transformers' loading bars: one line, no traceback
        last = err.splitlines()[-1]
        assert "Traceback" not in err and last.startswith("bridge_parts: error: ") and message in last, err


def test_instruct_memory_times_rows_from_their_settings_files(tiny_llama, tmp_path):
    """benchmarks/instruct_memory.py --row: each settings file built as its instruct run builds it; the trainable count is
    PEFT's own for the LoRA row of that rank."""
    import subprocess

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    train = instruction_data(tmp_path / "train.jsonl", 16, 0)
    rows = {}
    for method in ("lora", "dora"):
        settings = dict(model=str(tiny_llama), method=method, train=str(train), out="x", lora_rank=4, batch_size=4, max_length=16,
                        template="plain", general="ignored.txt")
        (tmp_path / f"{method}.yaml").write_text(yaml.safe_dump(settings))
        rows[method] = str(tmp_path / f"{method}.yaml")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "instruct_memory.py"), *(f"--row={k}={v}" for k, v in rows.items()),
                          "--steps", "1", "--repeats", "1", "--json", str(tmp_path / "t.json")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    recorded = json.loads((tmp_path / "t.json").read_text())
    assert "batch_size" not in recorded["settings"] and "first 1 batches" in recorded["settings"]["batches"]  # the files' own
    table = recorded["rows"]
    assert list(table) == ["lora", "dora"] and all(r["step_s"] > 0 and r["peak_mb"] > 0 for r in table.values())
    targets = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama), LoraConfig(r=4, target_modules=targets))
    assert table["lora"]["trainable"] == sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert table["dora"]["trainable"] > table["lora"]["trainable"]  # DoRA's magnitudes on top
    assert "peak vs DoRA" in out.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "instruct_memory.py"), "--row", f"x={tmp_path / 'none.yaml'}"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--row x=" in bad.stderr.splitlines()[-1]
