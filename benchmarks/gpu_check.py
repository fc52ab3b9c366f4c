"""The GPU check: the performance benchmarks in bf16 on one GPU, within about 8 minutes, into one JSON.

Made for a lent GPU machine without network access or the demo's weights: the model is randomly
initialised from the shape of ``--shape`` (a folder with a config.json and the tokenizer's files,
``.cache/smollm2-135m`` by default; its weights are not read), so it costs what the real model
costs. The corpora are the excerpts under data/demo. Sections, each a benchmark script of this
folder in its own processes:

  dap       pretrain_throughput.py: fused vs sequential vs concurrent DAP (and NCL, fused with checkpointing)
  instruct  instruct_memory.py: DoMIX instruct vs PEFT LoRA and DoRA, peak memory and step time
  instruct_pad  the same for DoMIX and DoRA with every batch padded to a multiple of 64 tokens (--pad-multiple): does
            the first pass at each new length stop costing DoMIX several steady steps once lengths share shapes?
  finetune  finetune_memory.py: DoMIX fine-tuning vs LoRA of the same total rank, memory and step time
  rate      step_rate.py: DAP, fine-tuning and instruct steps against the GPU's bf16 matrix-multiply rate

``--dry-run`` runs every section at a tiny size on the CPU (float32), to check the script itself.
Start it through ``benchmarks/gpu_check.sh``, which first installs missing packages from carried wheels.

    bash benchmarks/gpu_check.sh --out "$OUT"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from step_rate import make_store  # benchmarks/ is on the path when a script of it runs

HERE = Path(__file__).resolve().parent
CORPORA = {name: HERE.parent / "data" / "demo" / f"{name}.txt" for name in ("restaurant", "biomed", "cs")}
TASK = HERE.parent / "data" / "demo" / "tasks" / "restaurant" / "train.jsonl"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "generation_config.json")

# per section: (script arguments at full size, at dry-run size, timeout in seconds at full size: 550 in all,
# plus about 20 for the module store; the sections took 347 s on the H200 before instruct_pad, which adds about 70)
SIZES = {
    "dap": (["--steps", "6", "--batch-size", "8", "--seq-len", "512", "--repeats", "2"],
            ["--steps", "2", "--batch-size", "2", "--seq-len", "32", "--repeats", "1"], 230),
    "instruct": (["--batch-size", "16", "--max-length", "512", "--steps", "5", "--repeats", "1"],
                 ["--batch-size", "2", "--max-length", "160", "--steps", "1", "--repeats", "1"], 130),
    "instruct_pad": (["--batch-size", "16", "--max-length", "512", "--steps", "5", "--repeats", "1", "--pad-multiple", "64",
                      "--methods", "domix", "dora"],
                     ["--batch-size", "2", "--max-length", "160", "--steps", "1", "--repeats", "1", "--pad-multiple", "64",
                      "--methods", "domix", "dora"], 80),
    "finetune": (["--batch-size", "32", "--seq-len", "512", "--steps", "5"], ["--batch-size", "2", "--seq-len", "32", "--steps", "1"], 50),
    "rate": (["--batch-size", "16", "--seq-len", "512", "--steps", "5"], ["--batch-size", "2", "--seq-len", "32", "--steps", "1"], 60),
}


def random_model(shape: Path, out: Path, tiny: bool) -> Path:
    """A randomly initialised causal LM of ``shape``'s architecture (tiny: 2 narrow layers) with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(shape)
    if tiny:
        config.update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "num_key_value_heads": 2, "head_dim": 16})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        # transformers initialises the padding token's embedding row to zeros. A trained model's row is not,
        # and here, where a corpus's separator is that token, a zero row makes every RMSNorm's backward
        # multiply the token's gradient by 1/sqrt(eps) (about 300; some 70x a layer, measured): over SmolLM2's
        # 30 layers it overflows, and training stops on a non-finite gradient, which the real weights never give
        embeddings = model.get_input_embeddings().weight
        zero = (embeddings == 0).all(dim=1)
        embeddings[zero] = torch.randn(int(zero.sum()), embeddings.shape[1]) * config.initializer_range
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (shape / name).exists():
            shutil.copy(shape / name, out / name)
    return out


def environment() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "cpus": os.cpu_count()}
    for package in ("transformers", "peft", "accelerate", "datasets"):
        try:
            info[package] = __import__(package).__version__
        except ImportError:
            info[package] = None
    return info


def section(name: str, model: Path, root: Path, store: Path, device: str, dtype: str, dry: bool) -> dict:
    full, tiny, limit = SIZES[name]
    out = root / f"{name}.json"
    domains = [a for n, p in CORPORA.items() for a in ("--domain", f"{n}={p}")]
    common = ["--model", str(model), "--dtype", dtype, "--device", device, "--json", str(out)]
    script, extra = {
        "dap": ("pretrain_throughput.py", domains),
        "instruct": ("instruct_memory.py", [*domains[:4], "--task", str(TASK)]),  # two adapters
        "instruct_pad": ("instruct_memory.py", [*domains[:4], "--task", str(TASK)]),
        "finetune": ("finetune_memory.py", ["--modules", str(store)]),
        "rate": ("step_rate.py", ["--store", str(store)]),
    }[name]
    cmd = [sys.executable, str(HERE / script), *common, *extra, *(tiny if dry else full)]
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=None if dry else limit)
    except subprocess.TimeoutExpired:
        return {"status": "timed out", "seconds": limit, "command": cmd[1:]}
    seconds = round(time.perf_counter() - started, 1)
    if done.returncode != 0:
        return {"status": "failed", "seconds": seconds, "command": cmd[1:], "stderr": done.stderr[-3000:]}
    print(done.stdout, flush=True)
    return {"status": "ok", "seconds": seconds, "command": cmd[1:], "table": done.stdout, "result": json.loads(out.read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default=".cache/smollm2-135m", help="folder with the model's config.json and tokenizer")
    parser.add_argument("--out", default="runs/gpu_check", help="folder for gpu_check.json")
    parser.add_argument("--sections", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--dry-run", action="store_true", help="every section tiny, on the CPU in float32")
    args = parser.parse_args()
    device, dtype = ("cpu", "float32") if args.dry_run else ("cuda", "bfloat16")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report = {"environment": environment(), "dry_run": args.dry_run, "shape": args.shape, "sections": {}}
    if not args.dry_run and report["environment"]["gpu"] is None:
        sys.exit("gpu_check: this torch sees no GPU; use --dry-run to check the script on a CPU")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = random_model(Path(args.shape), root / "model", args.dry_run)
        store = root / "store"
        make_store(str(model), store, dtype, device, CORPORA)
        for name in args.sections:
            print(f"== {name}", flush=True)
            report["sections"][name] = result = section(name, model, root, store, device, dtype, args.dry_run)
            if result["status"] != "ok":
                print(f"gpu_check: section {name} {result['status']}: {result.get('stderr', '')[-1000:]}", flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu_check: {sum(r['status'] == 'ok' for r in report['sections'].values())} of {len(report['sections'])} sections ok "
          f"in {report['seconds']} s; wrote {out / 'gpu_check.json'}")
    if any(r["status"] != "ok" for r in report["sections"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
