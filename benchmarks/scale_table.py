"""Memory, time and storage of domain modules and task models for large bases, from formulas
calibrated on a measured model; the tables of docs/scale.md.

The one figure taken from a measurement is the activation memory a LoRA step keeps per token and
layer: measured here on ``--model`` (bytes autograd saves in one forward pass, each storage once)
and expressed as a multiple of the block's structural width 6d + 2kv + 4f, which then scales to the
other shapes. The GPU's matrix-multiply rate is the device team's reading of an H200 (790 TFLOP/s
bf16, an 8192^3 product) times ``--efficiency``, the share a training step reaches (an assumption,
stated in every table, until a GPU run of benchmarks/gpu_check.sh measures it).

    python benchmarks/scale_table.py --model .cache/smollm2-135m --json benchmarks/results/scale_table.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

GIB = 2**30
H200_BF16_TFLOPS = 790.0
H200_GIB = 139.0
ARCHS = {  # the published configurations
    "Llama-3-8B": {"d": 4096, "f": 14336, "layers": 32, "heads": 32, "kv_heads": 8, "vocab": 128256},
    "Llama-3-70B": {"d": 8192, "f": 28672, "layers": 80, "heads": 64, "kv_heads": 8, "vocab": 128256},
}


def shape(a: dict) -> dict:
    kv = a["d"] * a["kv_heads"] // a["heads"]
    d, f, L = a["d"], a["f"], a["layers"]
    blocks = L * (2 * d * d + 2 * d * kv + 3 * d * f)  # matrix weights of the blocks
    return {**a, "kv": kv, "blocks": blocks, "params": blocks + 2 * d * a["vocab"] + L * 2 * d + d,  # + embeddings, head, norms
            "lora_per_rank": L * (9 * d + 2 * kv + 3 * f),  # sum of in + out over q, k, v, o, gate, up, down
            "outs": L * (3 * d + 2 * kv + 2 * f), "width": 6 * d + 2 * kv + 4 * f}


def measure_activation_factor(model_dir: str, dtype: torch.dtype, rows: int = 4, seq: int = 128) -> dict:
    """Bytes saved for backward per token and layer by a LoRA DAP step's forward, over the structural width."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from domix.lm_loss import lm_losses

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")).train()
    c = model.config
    s = shape({"d": c.hidden_size, "f": c.intermediate_size, "layers": c.num_hidden_layers, "heads": c.num_attention_heads,
               "kv_heads": c.num_key_value_heads, "vocab": c.vocab_size})
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    ids = torch.randint(10, 1000, (rows, seq), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = lm_losses(model, ids, ids, "clm")[0]
    per_token_layer = sum(seen.values()) / (rows * seq) / s["layers"]
    element = torch.finfo(dtype).bits // 8
    del loss
    return {"model": model_dir, "dtype": str(dtype).removeprefix("torch."), "bytes_per_token_layer": per_token_layer,
            "width": s["width"], "factor": per_token_layer / (s["width"] * element)}


def rows(factor: float, efficiency: float, domain_tokens: float, batch_tokens: int, seq: int) -> list[dict]:
    out = []
    for name, arch in ARCHS.items():
        s = shape(arch)
        for r in (8, 16):
            lora = r * s["lora_per_rank"]
            weights = 2 * s["params"]  # bf16
            act = factor * s["width"] * 2  # bf16 bytes per token and layer
            state = 16 * lora  # fp32 adapter weight, gradient and two Adam moments (PEFT keeps adapters in fp32)
            # per fused domain, with gradient checkpointing: its block inputs kept, one block's activations recomputed
            per_domain_ckpt = state + batch_tokens * (2 * s["d"] * s["layers"] + act)
            per_domain = state + batch_tokens * act * s["layers"]
            free = H200_GIB * GIB - weights - 2 * GIB  # 2 GiB for the CUDA context, workspace and a loss chunk
            flops_token = 4 * s["blocks"] + 4 * s["d"] * s["vocab"] + 6 * seq * s["d"] * s["layers"] // 2  # + causal attention
            ckpt_flops_token = flops_token + 2 * s["blocks"]  # recomputed forward
            rate = H200_BF16_TFLOPS * 1e12 * efficiency
            R = 3 * r  # a task model bridging three modules
            task = R * s["outs"] + 7 * s["layers"] * R * R
            out.append({
                "base": name, "rank": r, "base_params_b": s["params"] / 1e9, "base_gib_bf16": weights / GIB,
                "module_params_m": lora / 1e6, "module_mb_fp32": 4 * lora / 1e6, "module_mb_bf16": 2 * lora / 1e6,
                "task_params_m_3_modules": task / 1e6, "task_mb_bf16": 2 * task / 1e6,
                "activation_mb_per_token": act * s["layers"] / 2**20,
                "domain_gib_no_ckpt": per_domain / GIB, "domain_gib_ckpt": per_domain_ckpt / GIB,
                "fused_domains_per_gpu_ckpt": max(0, math.floor(free / per_domain_ckpt)),
                "fused_domains_per_gpu": max(0, math.floor(free / per_domain)),
                "tokens_per_s_per_gpu_ckpt": rate / ckpt_flops_token,
                "gpu_hours_per_domain_ckpt": domain_tokens * ckpt_flops_token / rate / 3600,
            })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=".cache/smollm2-135m", help="the model the activation factor is measured on")
    parser.add_argument("--efficiency", type=float, default=0.4, help="share of the matmul rate a step reaches (assumed)")
    parser.add_argument("--domain-tokens", type=float, default=1e8, help="tokens of one domain's corpus, one epoch")
    parser.add_argument("--batch-tokens", type=int, default=8 * 2048, help="tokens per domain per step")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--json", default="benchmarks/results/scale_table.json")
    args = parser.parse_args()
    measured = [measure_activation_factor(args.model, dtype) for dtype in (torch.float32, torch.bfloat16)]
    factor = measured[1]["factor"]  # the bf16 reading: bf16 is what a large base trains in
    table = rows(factor, args.efficiency, args.domain_tokens, args.batch_tokens, args.seq_len)
    for m in measured:
        print(f"measured on {m['model']} ({m['dtype']}): {m['bytes_per_token_layer']:,.0f} bytes per token and layer saved for "
              f"backward = {m['factor']:.2f} x (6d + 2kv + 4f = {m['width']:,}) elements")
    print(f"\nbf16 base, LoRA on every linear layer of every block, H200 ({H200_GIB:.0f} GiB, {H200_BF16_TFLOPS:.0f} TFLOP/s bf16) "
          f"at an assumed {args.efficiency:.0%} of it; {args.batch_tokens:,} tokens per domain per step of {args.seq_len}\n")
    print("| base | r | module (fp32 / bf16) | task model, 3 modules (bf16) | activations per token | one fused domain, no ckpt / ckpt "
          "| domains per H200, no ckpt / ckpt | tokens/s per H200 (ckpt) | GPU-hours per 1e8-token domain (ckpt) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['base']} | {r['rank']} | {r['module_mb_fp32']:.0f} / {r['module_mb_bf16']:.0f} MB | {r['task_mb_bf16']:.0f} MB "
              f"| {r['activation_mb_per_token']:.2f} MB | {r['domain_gib_no_ckpt']:.0f} / {r['domain_gib_ckpt']:.1f} GiB "
              f"| {r['fused_domains_per_gpu']} / {r['fused_domains_per_gpu_ckpt']} | {r['tokens_per_s_per_gpu_ckpt']:,.0f} "
              f"| {r['gpu_hours_per_domain_ckpt']:.1f} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"settings": vars(args), "measured": measured, "rows": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
