"""How independent the domain modules of a store are: |cos| between domains' A per layer, rank of A_cat.

Modules that started from the same weights keep nearly parallel A matrices (|cos| near 1), and their
concatenation A_cat spans about r dimensions instead of Σr: the bridge then mixes copies of one
subspace. Reads the adapter files directly (safetensors), not through domix's loaders.

    python benchmarks/module_overlap.py runs/bridge-init/store
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from pathlib import Path

import torch
from safetensors.torch import load_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", help="a domix pretrain output folder")
    parser.add_argument("--layer", default="layers.0.mlp.down_proj", help="a layer whose singular values of A_cat to print")
    args = parser.parse_args()
    folders = sorted(p for p in Path(args.store).iterdir() if (p / "adapter_model.safetensors").is_file())
    if len(folders) < 2:
        raise SystemExit(f"error: {args.store} holds fewer than two LoRA modules; give a store with at least two domains")
    A = {f.name: {k.removesuffix(".lora_A.weight"): v.double() for k, v in load_file(str(f / "adapter_model.safetensors")).items()
                  if k.endswith(".lora_A.weight")} for f in folders}
    names = list(A)
    layers = [l for l in A[names[0]] if all(l in A[n] for n in names)]
    cosines = [abs(float(torch.nn.functional.cosine_similarity(A[a][l].flatten(), A[b][l].flatten(), dim=0)))
               for l in layers for a, b in itertools.combinations(names, 2)]
    ranks = [int(torch.linalg.matrix_rank(torch.cat([A[n][l] for n in names]))) for l in layers]
    total = sum(A[n][layers[0]].shape[0] for n in names)
    print(f"{len(names)} modules ({', '.join(names)}), {len(layers)} layers")
    print(f"|cos| between two domains' A, over layers and pairs: median {statistics.median(cosines):.4f}, "
          f"max {max(cosines):.4f}; above 0.9: {sum(c > 0.9 for c in cosines)} of {len(cosines)}")
    print(f"numerical rank of A_cat: min {min(ranks)}, median {statistics.median(ranks):g}, max {max(ranks)} (Σr = {total})")
    match = [l for l in layers if l.endswith(args.layer)]
    if match:
        s = torch.linalg.svdvals(torch.cat([A[n][match[0]] for n in names]))
        print(f"{match[0]}: singular values of A_cat", " ".join(f"{v:.3f}" for v in s.tolist()))


if __name__ == "__main__":
    main()
