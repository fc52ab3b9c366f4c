"""Tiny randomly initialised models (BERT-like and Llama-like) saved as local folders."""

from __future__ import annotations

import atexit
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub in tests
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# token and datasets caches of this test session, never the user's
_CACHE = tempfile.mkdtemp(prefix="domix-tests-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.setdefault("DOMIX_CACHE", _CACHE)
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(_CACHE, "datasets"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)  # tiny models: threads only add contention

WORDS = ("the food service staff menu pasta pizza wine table price protein cell gene enzyme binds inhibits "
         "model data network paper method results learning training neural task dataset we propose show").split()


def make_corpus(path: Path, lines: int, seed: int = 0, words: tuple[str, ...] = tuple(WORDS)) -> Path:
    """Sentences with structure a tiny model can learn: each word tends to follow the one before."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        w = rng.randrange(len(words))
        sentence = []
        for _ in range(rng.randint(6, 14)):
            sentence.append(words[w])
            w = (w + rng.choice((1, 1, 1, 2))) % len(words)
        out.append(" ".join(sentence))
    path.write_text("\n".join(out) + "\n")
    return path


def _tokenizer(kind: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if kind == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    else:
        specials = ["<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + list(WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials[1] if kind == "bert" else "<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                       cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>")


def make_tiny_model(path: Path, kind: str, seed: int = 0, hidden_size: int = 32, intermediate_size: int = 64) -> Path:
    from transformers import BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer(kind)
    torch.manual_seed(seed)
    if kind == "bert":
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=intermediate_size, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
        model = BertForMaskedLM(config)
    else:
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=1, intermediate_size=intermediate_size, max_position_embeddings=128,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
        model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(params=["bert", "llama"])
def tiny_model(request, tiny_bert, tiny_llama) -> Path:
    return tiny_bert if request.param == "bert" else tiny_llama


@pytest.fixture(scope="session")
def corpora(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpora")
    return {
        "food": make_corpus(root / "food.txt", 200, seed=1, words=tuple(WORDS[:12])),
        "bio": make_corpus(root / "bio.txt", 200, seed=2, words=tuple(WORDS[10:22])),
    }


def leaf(name: str) -> str:
    return re.sub(r"\W", "_", name)


def make_task(root: Path, seed: int = 0, sizes=(96, 32, 32), pairs: bool = False, labels=("food", "bio", "cs")) -> Path:
    """A task a tiny model can learn (3 classes, or those of ``labels``): the label is the topic of most words."""
    import json

    rng = random.Random(seed)
    topics = {k: v for k, v in {"food": WORDS[:8], "bio": WORDS[10:16], "cs": WORDS[18:26]}.items() if k in labels}
    root.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "dev", "test"), sizes):
        lines = []
        for i in range(n):
            label = list(topics)[i % len(topics)]
            words = [rng.choice(topics[label]) for _ in range(rng.randint(4, 9))] + [rng.choice(WORDS) for _ in range(2)]
            rng.shuffle(words)
            row = {"text": " ".join(words), "label": label}
            if pairs:
                row["text_pair"] = " ".join(rng.choice(WORDS) for _ in range(3))
            lines.append(json.dumps(row))
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def task(tmp_path_factory) -> Path:
    return make_task(tmp_path_factory.mktemp("task"))


def write_compare_config(path: Path, tiny_llama: Path, corpora: dict, task: Path, **settings) -> Path:
    """A comparison config over the tiny model, the test corpora and the topics task (``settings`` over the defaults).
    Its pre-training names the LoRA rank by its old name, rank: old configs keep loading."""
    import yaml

    config = {
        "model": str(tiny_llama),
        "out": str(path.parent / "out"),
        "domains": {name: str(p) for name, p in corpora.items()},
        "tasks": {"topics": {"path": str(task), "domain": "food"}},
        "seeds": [1],
        "pretrain": {"steps": 4, "batch_size": 8, "seq_len": 32, "rank": 2, "lr": 5e-3, "heldout_max_blocks": 4},
        "finetune": {"epochs": 1, "batch_size": 16, "lr": 5e-3, "max_length": 32, "dtype": "float64"},
        **settings,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _store(root: Path, model: Path, corpora: dict, ranks=(4, 4)) -> Path:
    from domix.pretraining.config import PretrainConfig
    from domix.pretraining.run import pretrain

    for (name, path), rank in zip(corpora.items(), ranks):
        pretrain(PretrainConfig(model=str(model), domains={name: str(path)}, out=str(root / name), lora_rank=rank,
                                steps=8, batch_size=8, seq_len=32, lr=5e-3))
    store = root / "store"
    store.mkdir()
    for name in corpora:
        (root / name / name).rename(store / name)
    return store


@pytest.fixture(scope="session")
def llama_store(tmp_path_factory, tiny_llama, corpora) -> Path:
    """Modules of ranks 4 and 2 on the tiny Llama (trained in separate runs, gathered in one store)."""
    return _store(tmp_path_factory.mktemp("llama-store"), tiny_llama, corpora, ranks=(4, 2))


@pytest.fixture(scope="session")
def bert_store(tmp_path_factory, tiny_bert, corpora) -> Path:
    return _store(tmp_path_factory.mktemp("bert-store"), tiny_bert, corpora)
