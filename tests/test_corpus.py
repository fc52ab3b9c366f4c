import json

import pytest
import torch
from transformers import AutoTokenizer

from domix.batches import IGNORE_INDEX, masked_batch
from domix.corpus import read_corpus, split_heldout, tokenize_blocks
from domix.errors import DomixError
from domix.tokens import TokenBlocks


def test_txt_jsonl_and_folder_give_the_same_passages_and_fingerprint(tmp_path):
    lines = ["first passage here", "second one", "third and last"]
    (tmp_path / "c.txt").write_text("\n".join(lines[:2]) + "\n\n  \n" + lines[2] + "\n")
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(lines)))
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "a.txt").write_text(lines[0] + "\n")
    (folder / "b.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in lines[1:]))
    corpora = [read_corpus("d", tmp_path / name) for name in ("c.txt", "c.jsonl", "parts")]
    assert [[p for chunk in c.chunks() for p in chunk] for c in corpora] == [lines] * 3
    assert [c.passages for c in corpora] == [3] * 3
    assert len({c.fingerprint for c in corpora}) == 1
    (tmp_path / "other.txt").write_text("something else\n")
    assert read_corpus("d", tmp_path / "other.txt").fingerprint != corpora[0].fingerprint


@pytest.mark.parametrize("content, message", [
    ("\n  \n", "has no text"),
    ('{"txt": "x"}\n', "no 'text' field"),
    ("{not json\n", "not valid JSON"),
])
def test_bad_corpora_are_refused(tmp_path, content, message):
    path = tmp_path / ("c.jsonl" if "{" in content else "c.txt")
    path.write_text(content)
    with pytest.raises(DomixError, match=message):
        read_corpus("d", path)


def test_missing_corpus_and_unknown_suffix(tmp_path):
    with pytest.raises(DomixError, match="does not exist"):
        read_corpus("d", tmp_path / "nope.txt")
    (tmp_path / "c.docx").write_text("a,b\n")
    with pytest.raises(DomixError, match="unsupported type .docx"):
        read_corpus("d", tmp_path / "c.docx")


def test_blocks_concatenate_passages_with_eos_and_drop_the_tail(tiny_llama, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    (tmp_path / "c.txt").write_text("the food\nthe menu price\n")  # 2 + 1 + 3 + 1 = 7 tokens
    blocks = tokenize_blocks(read_corpus("d", tmp_path / "c.txt"), tok, seq_len=3, append_eos=True)
    ids = lambda words: tok.convert_tokens_to_ids(words)  # noqa: E731
    assert blocks[:].tolist() == [ids(["the", "food", "</s>"]), ids(["the", "menu", "price"])]
    with pytest.raises(DomixError, match="too short for one sequence of 8"):
        tokenize_blocks(read_corpus("d", tmp_path / "c.txt"), tok, seq_len=8, append_eos=True)


def test_heldout_split_is_disjoint_capped_and_seeded():
    blocks = TokenBlocks.of_tensor(torch.arange(200).view(100, 2))
    train, held = split_heldout(blocks, 0.05, 3, seed=1, domain="d")
    assert len(held) == 3 and len(train) == 97
    assert not set(held[:][:, 0].tolist()) & set(train[:][:, 0].tolist())
    again, held_again = split_heldout(blocks, 0.05, 3, seed=1, domain="d")
    assert torch.equal(held[:], held_again[:]) and torch.equal(train[:], again[:])
    with pytest.raises(DomixError, match="too few"):
        split_heldout(blocks.take([0]), 0.05, 3, seed=1, domain="d")


def test_masking_follows_bert_80_10_10_and_never_touches_special_tokens(tiny_bert):
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    words = torch.randint(5, len(tok), (400, 64))
    words[:, 0], words[:, -1] = tok.cls_token_id, tok.sep_token_id
    batch = masked_batch(words, tok, torch.Generator().manual_seed(0))
    chosen = batch["labels"] != IGNORE_INDEX
    assert abs(chosen.float().mean().item() - 0.15) < 0.01
    assert not chosen[:, 0].any() and not chosen[:, -1].any()
    assert torch.equal(batch["labels"][chosen], words[chosen])
    masked = (batch["input_ids"] == tok.mask_token_id) & chosen
    kept = (batch["input_ids"] == words) & chosen
    assert abs(masked.sum().item() / chosen.sum().item() - 0.8) < 0.03
    assert 0.08 < kept.sum().item() / chosen.sum().item() < 0.14  # 10% kept + random draws of the same id
    assert torch.equal(batch["input_ids"][~chosen], words[~chosen])
    again = masked_batch(words, tok, torch.Generator().manual_seed(0))
    assert torch.equal(again["input_ids"], batch["input_ids"])


def test_masking_always_predicts_at_least_one_token(tiny_bert):
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    words = torch.randint(5, len(tok), (1, 3))
    for seed in range(50):
        batch = masked_batch(words, tok, torch.Generator().manual_seed(seed))
        assert (batch["labels"] != IGNORE_INDEX).sum() >= 1


def test_pairs_use_the_separator_or_two_lines(tiny_bert, tiny_llama, tmp_path):
    from domix.tasks import encode, read_split

    (tmp_path / "s.jsonl").write_text(json.dumps({"text": "food", "text_pair": "the menu", "label": "x"}) + "\n")
    split = read_split(tmp_path / "s.jsonl", "train")
    bert = AutoTokenizer.from_pretrained(tiny_bert)
    assert bert.convert_ids_to_tokens(encode(split, bert, 16)[0]) == ["[CLS]", "food", "[SEP]", "the", "menu", "[SEP]"]
    llama = AutoTokenizer.from_pretrained(tiny_llama)
    assert encode(split, llama, 16)[0] == llama("food\nthe menu")["input_ids"]
