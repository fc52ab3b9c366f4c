"""Inputs in the formats users of the field keep them in (jsonl, txt, CSV, TSV, Parquet, save_to_disk folders),
read through `datasets` where it reads them; corpora tokenized once into a memory-mapped cache."""

import json
import os
import subprocess
import sys
import textwrap

import datasets
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from domix.cli import main
from domix.corpus import read_corpus, tokenize_blocks
from domix.errors import DomixError
from domix.sources import Columns
from domix.tasks import read_task
from domix.tokens import TokenBlocks, cache_dir

from conftest import make_corpus


def _lines(path):
    return [line for line in path.read_text().splitlines() if line.strip()]


def write_corpus_formats(root, lines, column="text"):
    """The same passages as a .txt, .jsonl, .csv, .tsv, .parquet file and a save_to_disk folder."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "c.txt").write_text("\n".join(lines) + "\n")
    (root / "c.jsonl").write_text("".join(json.dumps({column: t, "id": i}) + "\n" for i, t in enumerate(lines)))
    table = datasets.Dataset.from_dict({"id": list(range(len(lines))), column: lines})
    table.to_csv(root / "c.csv", index=False)
    table.to_csv(root / "c.tsv", index=False, sep="\t")
    table.to_parquet(root / "c.parquet")
    table.save_to_disk(root / "saved")
    return {name: root / name for name in ("c.txt", "c.jsonl", "c.csv", "c.tsv", "c.parquet", "saved")}


def test_a_corpus_reads_alike_from_every_format(tmp_path, tiny_llama):
    lines = _lines(make_corpus(tmp_path / "src.txt", 60, seed=3))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    sources = write_corpus_formats(tmp_path / "formats", lines)
    corpora = {name: read_corpus("d", path) for name, path in sources.items()}
    assert {c.fingerprint for c in corpora.values()} == {corpora["c.txt"].fingerprint}
    assert {c.passages for c in corpora.values()} == {60}
    for name, corpus in corpora.items():
        assert [p for chunk in corpus.chunks() for p in chunk] == lines, name
    # the ids are the tokenizer's, each passage ended with </s>, cut into blocks of 8
    ids = [i for row in tokenizer(lines)["input_ids"] for i in row + [tokenizer.eos_token_id]]
    expected = torch.tensor(ids[: len(ids) // 8 * 8]).view(-1, 8)
    for name, corpus in corpora.items():
        assert torch.equal(tokenize_blocks(corpus, tokenizer, 8, append_eos=True)[:], expected), name


def test_a_corpus_text_column_is_named_with_text_column(tmp_path):
    sources = write_corpus_formats(tmp_path, ["alpha beta", "gamma delta"], column="sentence")
    for name in ("c.jsonl", "c.csv", "c.parquet", "saved"):
        with pytest.raises(DomixError, match="text-column|'text' field"):
            read_corpus("d", sources[name])
        assert read_corpus("d", sources[name], text_column="sentence").passages == 2


def test_the_token_cache_is_written_once_as_uint16_and_memory_mapped(tmp_path, tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    corpus = read_corpus("d", make_corpus(tmp_path / "c.txt", 80, seed=11))
    first = tokenize_blocks(corpus, tokenizer, 16, append_eos=True)
    files = sorted(p for p in cache_dir().glob(f"{corpus.fingerprint}-*"))
    assert [p.suffix for p in files] == [".bin", ".json"]
    meta = json.loads(files[1].read_text())
    assert meta["dtype"] == "uint16" and files[0].stat().st_size == 2 * meta["tokens"]
    stamp = files[0].stat().st_mtime_ns
    again = tokenize_blocks(read_corpus("d", tmp_path / "c.txt"), tokenizer, 16, append_eos=True)
    assert files[0].stat().st_mtime_ns == stamp  # read from the cache, not tokenized again
    assert isinstance(again.tables[0], np.memmap)
    assert torch.equal(first[:], again[:])
    assert not list(cache_dir().glob("*.tmp"))


def test_token_blocks_index_like_a_tensor_and_join():
    a = TokenBlocks.of_tensor(torch.arange(20).view(10, 2))
    b = TokenBlocks.of_tensor(100 + torch.arange(6).view(3, 2))
    joined = TokenBlocks.concat([a.take([1, 3]), b])
    reference = torch.cat([torch.arange(20).view(10, 2)[[1, 3]], 100 + torch.arange(6).view(3, 2)])
    assert joined.shape == (5, 2) and joined.numel() == 10 and len(joined) == 5
    assert torch.equal(joined[:], reference)
    assert torch.equal(joined[torch.tensor([4, 0, 2])], reference[[4, 0, 2]])
    assert torch.equal(joined[1:3], reference[1:3]) and torch.equal(joined[4], reference[4])


def _task_rows(n, seed):
    rng = np.random.default_rng(seed)
    labels = ["neg", "neu", "pos"]
    return [{"sentence": f"word{rng.integers(50)} word{rng.integers(50)}", "aspect": f"a{i}", "y": labels[i % 3]} for i in range(n)]


def test_a_task_reads_alike_from_jsonl_csv_parquet_and_a_saved_dataset(tmp_path):
    splits = {"train": _task_rows(12, 0), "dev": _task_rows(6, 1), "test": _task_rows(6, 2)}
    jsonl = tmp_path / "jsonl"
    jsonl.mkdir()
    for name, rows in splits.items():
        (jsonl / f"{name}.jsonl").write_text("".join(json.dumps({"text": r["sentence"], "text_pair": r["aspect"], "label": r["y"]}) + "\n"
                                                     for r in rows))
    reference = read_task(jsonl)
    columns = Columns(text="sentence", text_pair="aspect", label="y")
    tables = {name: datasets.Dataset.from_list(rows) for name, rows in splits.items()}
    for kind in ("csv", "parquet"):
        folder = tmp_path / kind
        folder.mkdir()
        for name, table in tables.items():
            getattr(table, f"to_{kind}")(folder / f"{name if name != 'dev' else 'validation'}.{kind}")
        task = read_task(folder, columns=columns, splits={"dev": "validation"})
        _same(task, reference)
    # a DatasetDict with a ClassLabel label and the hub's "validation" split name
    label = datasets.ClassLabel(names=["neg", "neu", "pos"])
    saved = datasets.DatasetDict({("validation" if name == "dev" else name): datasets.Dataset.from_list(
        [{**r, "y": label.str2int(r["y"])} for r in rows],
        features=datasets.Features({"sentence": datasets.Value("string"), "aspect": datasets.Value("string"), "y": label}))
        for name, rows in splits.items()})
    saved.save_to_disk(tmp_path / "saved")
    _same(read_task(tmp_path / "saved", columns=columns), reference)


def _same(task, reference):
    assert task.labels == reference.labels
    for name in ("train", "dev", "test"):
        got, want = task.splits[name], reference.splits[name]
        assert (got.texts, got.pairs, got.labels) == (want.texts, want.pairs, want.labels), name
    return True


def test_missing_columns_splits_and_unreachable_names_are_one_clear_line(tmp_path, capsys):
    folder = tmp_path / "task"
    folder.mkdir()
    for name in ("train", "dev", "test"):
        datasets.Dataset.from_list(_task_rows(6, 0)).to_csv(folder / f"{name}.csv", index=False)
    with pytest.raises(DomixError, match=r"no 'text' column \(its columns: \['sentence', 'aspect', 'y'\]\); name the text column with --text-column"):
        read_task(folder)
    with pytest.raises(DomixError, match="no 'label' column .* --label-column"):
        read_task(folder, columns=Columns(text="sentence"))
    (folder / "dev.csv").rename(folder / "valid.csv")
    with pytest.raises(DomixError, match="dev split of .* does not exist: .* --splits"):
        read_task(folder, columns=Columns(text="sentence", label="y"))
    assert len(read_task(folder, columns=Columns(text="sentence", label="y"), splits={"dev": "valid"}).labels) == 3
    datasets.DatasetDict({"train": datasets.Dataset.from_list(_task_rows(6, 0))}).save_to_disk(tmp_path / "only-train")
    with pytest.raises(DomixError, match=r"task .*only-train has no dev split \(it has \['train'\]\); name the one to use with --splits dev=NAME"):
        read_task(tmp_path / "only-train", columns=Columns(text="sentence", label="y"))
    # a dataset name where the hub is out of reach (tests run offline)
    assert main(["finetune", "--task", "someone/no-such-dataset", "--model", "x", "--method", "head", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is neither a file or folder here nor a dataset datasets could load" in err[0]


def test_finetune_and_evaluate_take_a_parquet_task_with_other_column_names(tiny_llama, task, tmp_path, capsys):
    folder = tmp_path / "pq"
    folder.mkdir()
    for name in ("train", "dev", "test"):
        rows = [json.loads(line) for line in (task / f"{name}.jsonl").read_text().splitlines()]
        datasets.Dataset.from_list([{"sentence": r["text"], "category": r["label"]} for r in rows]).to_parquet(
            folder / f"{'validation' if name == 'dev' else name}.parquet")
    common = ["--model", str(tiny_llama), "--method", "head", "--epochs", "1", "--max-length", "24", "--seed", "3"]
    assert main(["finetune", "--task", str(task), "--out", str(tmp_path / "a")] + common) == 0
    assert main(["finetune", "--task", str(folder), "--text-column", "sentence", "--label-column", "category",
                 "--splits", "dev=validation", "--out", str(tmp_path / "b")] + common) == 0
    a, b = (json.loads((tmp_path / r / "result.json").read_text()) for r in "ab")
    assert a["test"] == b["test"] and a["labels"] == b["labels"]
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "b" / "model"), str(folder / "test.parquet"), "--text-column", "sentence",
                 "--label-column", "category"]) == 0
    assert f"accuracy {a['test']['accuracy']:.4f}" in capsys.readouterr().out


def test_a_corpus_larger_than_the_memory_cap_tokenizes_in_bounded_memory(tmp_path, tiny_llama):
    """The old reader held every passage and every id (a Python int list) at once; the streamed one holds
    a chunk. Under an address-space cap below the corpus's int64 ids, tokenizing must still finish."""
    corpus = tmp_path / "big.txt"
    line = " ".join(["the food service staff menu pasta pizza wine"] * 4) + "\n"
    with open(corpus, "w") as f:
        for _ in range(60_000):  # 60k passages, ~2M tokens: 16 MB of int64 ids, ~70 MB as a Python list
            f.write(line)
    script = textwrap.dedent(f"""
        import resource, sys
        from transformers import AutoTokenizer
        from domix.corpus import read_corpus, tokenize_blocks
        tok = AutoTokenizer.from_pretrained({str(tiny_llama)!r})
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        blocks = tokenize_blocks(read_corpus("big", {str(corpus)!r}), tok, 64, append_eos=True)
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
        print(len(blocks), blocks.numel(), grew)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    n_blocks, tokens, grew_kb = map(int, out.stdout.split())
    assert tokens >= 1_900_000 and n_blocks == tokens // 64
    assert grew_kb * 1024 < 8 * tokens  # less than the ids as one int64 tensor, let alone a Python list
