"""Write the stores and task models tests/test_legacy.py loads: made once by domix 87241a2, the version
before the methods moved into their own folders (domix.methods) and the engine was unified.

    git worktree add ../domix-87241a2 87241a2
    cd tests/data/legacy && PYTHONPATH=../domix-87241a2/src python make_legacy.py

Everything is tiny (a 2-layer Llama of width 32) and seeded; paths are recorded relative to this folder.
"""

import json
import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/, for conftest's tiny model and data makers
os.chdir(HERE)
os.environ["HF_HUB_OFFLINE"] = "1"
torch.set_num_threads(1)

from conftest import make_corpus, make_task, make_tiny_model, WORDS  # noqa: E402
from domix.finetuning.config import FinetuneConfig  # noqa: E402
from domix.finetuning.evaluate import load_any  # noqa: E402
from domix.finetuning.run import finetune, predict  # noqa: E402
from domix.llm.config import InstructConfig  # noqa: E402
from domix.llm.train import instruct  # noqa: E402
from domix.pretraining.config import PretrainConfig  # noqa: E402
from domix.pretraining.run import pretrain  # noqa: E402
from domix.tasks import encode, read_split  # noqa: E402

make_tiny_model(Path("base"), "llama")
corpora = {"food": make_corpus(Path("food.txt"), 60, seed=1, words=tuple(WORDS[:12])),
           "bio": make_corpus(Path("bio.txt"), 60, seed=2, words=tuple(WORDS[10:22]))}
general = make_corpus(Path("general.txt"), 60, seed=3)
task = make_task(Path("task"), sizes=(24, 8, 8))
common = dict(model="base", domains={k: str(v) for k, v in corpora.items()}, steps=4, batch_size=4, seq_len=16,
              heldout_max_blocks=2, lr=1e-2, rank=2, alpha=4.0)
pretrain(PretrainConfig(out="store", **common))
pretrain(PretrainConfig(out="mixda-store", method="mixda", general=str(general), **common))
pretrain(PretrainConfig(out="mode-store", method="mode", mode_block_size=1, **common))

expected = {}
for method in ("domix", "domix_fixed", "cat", "lora", "dora", "lora_fa", "full", "head", "mixda", "mode"):
    store = {"mixda": "mixda-store", "mode": "mode-store"}.get(method, "store")
    finetune(FinetuneConfig(method=method, modules=store, model="base", task=str(task), out=f"task-models/{method}",
                            epochs=1, batch_size=8, lr=1e-2, max_length=16, seed=1))
    model, tokenizer, _, max_length = load_any(f"task-models/{method}/model")
    rows = encode(read_split(task / "test.jsonl", "test"), tokenizer, max_length)
    expected[method] = predict(model, rows, tokenizer.pad_token_id, 8, "cpu").tolist()
rows = [{"instruction": " ".join(WORDS[i:i + 3]), "output": WORDS[i]} for i in range(12)]
Path("instruct.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
instruct(InstructConfig(modules="store", model="base", train="instruct.jsonl", out="instruct-model", epochs=1, batch_size=4,
                        max_length=32, seed=1))
Path("expected_logits.json").write_text(json.dumps(expected))
