"""Tiny randomly initialised models (BERT-like and Llama-like) saved as local folders."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub in tests
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


def make_tiny_model(path: Path, kind: str, seed: int = 0) -> Path:
    from transformers import BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer(kind)
    torch.manual_seed(seed)
    if kind == "bert":
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
        model = BertForMaskedLM(config)
    else:
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=1, intermediate_size=64, max_position_embeddings=128,
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
