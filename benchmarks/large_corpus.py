"""A corpus larger than the memory a run may use: ``domix pretrain`` under a data-segment cap (RLIMIT_DATA,
which counts the heap and anonymous memory but not the memory-mapped token cache), first tokenizing, then
from the cache; optionally an older domix source tree under the same cap, for contrast.

    python benchmarks/large_corpus.py --tokens 200e6 --cap-mb 1280 [--older-src ../old/src]

The corpus is passages of ../shared/data's three corpora, shuffled and repeated up to ``--tokens`` tokens;
the model a small random Llama with SmolLM2's tokenizer (49,152 ids: uint16), so the figures are the data
path's, not a model's. Prints a table and writes benchmarks/results/large_corpus.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "corpora"
TOKENIZER = ROOT / ".cache" / "smollm2-135m"
CORPORA = [DATA / f"{name}.txt" for name in ("restaurant", "biomed", "cs")]


def build_corpus(path: Path, tokens: int, tokenizer, corpora: list[Path]) -> dict:
    lines = [line.strip() for corpus in corpora for line in Path(corpus).read_text().splitlines() if line.strip()]
    per_line = sum(len(ids) + 1 for ids in tokenizer(lines)["input_ids"]) / len(lines)
    rng = random.Random(0)
    n = int(tokens / per_line)
    with open(path, "w") as f:
        written = 0
        while written < n:
            rng.shuffle(lines)
            for line in lines[: n - written]:
                f.write(line + "\n")
            written += min(len(lines), n - written)
    return {"passages": n, "bytes": path.stat().st_size, "tokens_estimated": int(n * per_line)}


def tiny_model(folder: Path, tokenizer) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def run(src: Path, model: Path, corpus: Path, out: Path, cache: Path, cap_mb: int) -> dict:
    """One ``domix pretrain`` in a child process under the cap: (exit code, wall s, peak RSS MB, last line)."""
    command = [sys.executable, "-m", "domix", "pretrain", "--model", str(model), "--domain", f"big={corpus}", "--out", str(out),
               "--steps", "20", "--batch-size", "4", "--seq-len", "128", "--rank", "4", "--heldout-max-blocks", "16", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(src), "DOMIX_CACHE": str(cache), "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    cap = cap_mb * 1024 * 1024
    log = out.with_suffix(".log")
    started = time.perf_counter()
    with open(log, "w") as sink:
        child = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                 preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_DATA, (cap, cap)))
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not the largest of all children
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    lines = log.read_text().strip().splitlines()
    return {"exit": child.returncode, "wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "last_line": lines[-1][:300] if lines else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=float, default=200e6, help="corpus size in tokens (default 200M)")
    parser.add_argument("--cap-mb", type=int, default=1280, help="RLIMIT_DATA of the pretrain process, MB (default 1280)")
    parser.add_argument("--older-src", help="an older domix src/ folder to run under the same cap (e.g. from git archive)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "large_corpus.json"))
    parser.add_argument("--tokenizer", default=str(TOKENIZER), help="the tokenizer's folder (default: SmolLM2's)")
    parser.add_argument("--corpora", nargs="+", default=[str(c) for c in CORPORA],
                        help="text files whose passages make the corpus (default: ../shared/data's three)")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    with tempfile.TemporaryDirectory(prefix="domix-large-corpus-") as tmp:
        tmp = Path(tmp)
        corpus = tmp / "big.txt"
        info = build_corpus(corpus, int(args.tokens), tokenizer, [Path(c) for c in args.corpora])
        tiny_model(tmp / "model", tokenizer)
        int64_mb = info["tokens_estimated"] * 8 / 2**20
        print(f"corpus: {info['passages']:,} passages, {info['bytes'] / 2**20:,.0f} MB of text, ~{info['tokens_estimated'] / 1e6:.0f}M tokens "
              f"({int64_mb:,.0f} MB as int64 ids); cap {args.cap_mb} MB", flush=True)
        rows = {}
        rows["domix, first run (tokenizes into the cache)"] = run(ROOT / "src", tmp / "model", corpus, tmp / "a", tmp / "cache", args.cap_mb)
        rows["domix, second run (reads the cache)"] = run(ROOT / "src", tmp / "model", corpus, tmp / "b", tmp / "cache", args.cap_mb)
        if args.older_src:
            rows[f"older src ({args.older_src})"] = run(Path(args.older_src), tmp / "model", corpus, tmp / "c", tmp / "cache-old", args.cap_mb)
        cache_mb = sum(p.stat().st_size for p in (tmp / "cache").rglob("*.bin")) / 2**20
    print(f"token cache: {cache_mb:,.0f} MB (uint16)\n")
    print(f"{'run':55} {'exit':>4} {'wall s':>8} {'peak RSS MB':>12}")
    for name, row in rows.items():
        print(f"{name:55} {row['exit']:>4} {row['wall_s']:>8} {str(row['peak_rss_mb']):>12}")
        if row["exit"]:
            print(f"    {row['last_line']}")
    Path(args.out).write_text(json.dumps({"corpus": info, "int64_ids_mb": round(int64_mb), "cap_mb": args.cap_mb,
                                          "token_cache_mb": round(cache_mb), "runs": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
