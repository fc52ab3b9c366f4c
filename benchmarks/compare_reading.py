"""What a `domix compare` folder says about DoMIX, beyond its score table: how much of each bridged layer's update
reads each domain's subspace, and how fast each method learned (training loss and dev macro-F1 per epoch).

    python benchmarks/compare_reading.py runs/compare-quality

Bridge usage of a layer and domain j is ‖B_cat diag(s) P[:, j] A_j‖_F (recorded by every bridged run); the share
of domain j is its usage over the sum over domains, averaged over layers, then over runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="the out folder of domix compare")
    args = parser.parse_args()
    records = [json.loads(p.read_text()) | {"_path": str(p.parent)} for p in sorted(Path(args.folder).glob("finetune/*/*/*/result.json"))]
    if not records:
        raise SystemExit(f"{args.folder} holds no finished fine-tuning run")

    print("Bridge usage: each domain's share of the update, mean over layers and runs")
    print(f"{'method':12} {'task':11} " + " ".join(f"{d:>11}" for d in records[0].get("bridge_usage", {}).get("domains", [])) + "  runs")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        if r.get("bridge_usage"):
            groups.setdefault((r["method"], r["task"]), []).append(r["bridge_usage"])
    for (method, task), usages in sorted(groups.items()):
        domains = usages[0]["domains"]
        shares = {d: [] for d in domains}
        for u in usages:
            per_layer = [[n / max(sum(row), 1e-30) for n in row] for row in u["norms"]]
            for j, d in enumerate(u["domains"]):
                shares[d].append(statistics.mean(row[j] for row in per_layer))
        print(f"{method:12} {task:11} " + " ".join(f"{statistics.mean(shares[d]):11.3f}" for d in domains) + f"  {len(usages)}")

    print("\nLearning: training loss (first -> last step) and dev macro-F1 per epoch, mean over runs")
    print(f"{'method':12} {'task':11} {'loss first':>10} {'loss last':>10}  dev macro-F1 by epoch")
    by: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        by.setdefault((r["method"], r["task"]), []).append(r)
    for (method, task), runs in sorted(by.items()):
        first = statistics.mean(r["loss_curve"][0][1] for r in runs)
        last = statistics.mean(r["loss_curve"][-1][1] for r in runs)
        epochs = min(len(r["dev_history"]) for r in runs)
        dev = [statistics.mean(r["dev_history"][e]["macro_f1"] for r in runs) for e in range(epochs)]
        print(f"{method:12} {task:11} {first:10.3f} {last:10.3f}  " + " ".join(f"{100 * v:5.1f}" for v in dev))


if __name__ == "__main__":
    main()
