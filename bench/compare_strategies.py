"""Side-by-side quality of the search strategies at equal cost.

Runs the whole pipeline (search -> fine-tune with distillation -> report) once per strategy
with the same model, data, budget, --search-evals and fine-tuning, then prints a markdown
table and writes a CSV. Protocol: test-halves by default (the shared pretrained ResNets were
trained on all 50,000 training images, so a val split carved from train is not unseen data);
the search scores the search half, the table's test top-1 is on the report half.

Example (the README's table):
    python bench/compare_strategies.py --model resnet56 --weights pretrained --data cifar10-jpeg \
        --budget flops=0.5 --search-evals 40 --strategies uniform,global,random,rl \
        --finetune-epochs 1 --max-batches-per-epoch 60 --out bench/results/flops50
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pruner.finetune import FinetuneConfig  # noqa: E402
from pruner.runs.config import RunConfig  # noqa: E402
from pruner.runs.job import run_job  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--weights", default="pretrained")
    p.add_argument("--data", default="cifar10-jpeg")
    p.add_argument("--protocol", default="test-halves")
    p.add_argument("--budget", default="flops=0.5")
    p.add_argument("--strategies", default="uniform,global,random,rl")
    p.add_argument("--search-evals", type=int, default=40)
    p.add_argument("--search-images", type=int, default=1000)
    p.add_argument("--recal-images", type=int, default=256)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--max-batches-per-epoch", type=int, default=60)
    p.add_argument("--set", action="append", default=[], metavar="STRATEGY.KEY=VALUE",
                   help="strategy hyperparameter, e.g. rl.steps=5")
    p.add_argument("--budget-for", action="append", default=[], metavar="STRATEGY=BUDGET",
                   help="a different budget for one strategy, e.g. rl=flops=0.6 (repeatable)")
    p.add_argument("--latency-repeats", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/compare")
    args = p.parse_args()

    params: dict[str, dict] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        strat, _, name = key.partition(".")
        try:
            params.setdefault(strat, {})[name] = json.loads(value)
        except json.JSONDecodeError:
            params.setdefault(strat, {})[name] = value

    budgets = {}
    for item in args.budget_for:
        strat, _, budget = item.partition("=")
        budgets[strat] = budget
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for strategy in args.strategies.split(","):
        cfg = RunConfig(model=args.model, weights=None if args.weights == "none" else args.weights, data=args.data,
                        protocol=args.protocol, budget=budgets.get(strategy, args.budget), strategy=strategy,
                        latency_repeats=args.latency_repeats,
                        strategy_params=params.get(strategy, {}), search_evals=args.search_evals,
                        search_images=args.search_images, recal_images=args.recal_images,
                        finetune=FinetuneConfig(epochs=args.finetune_epochs,
                                                max_batches_per_epoch=args.max_batches_per_epoch, seed=args.seed),
                        seed=args.seed)
        run_dir = out / strategy
        t0 = time.time()
        summary = run_job(cfg, run_dir, resume=(run_dir / "config.json").exists())
        if summary["status"] != "done":
            print(f"{strategy}: {summary['status']}: {summary['error']}", file=sys.stderr)
            continue
        s, b, r = summary["search"], summary["base"], summary["pruned"]
        rows.append({
            "strategy": strategy, "budget": cfg.budget, "evaluations": s["evaluations"], "val_top1_before_ft": round(s["best_val_top1"], 2),
            "test_top1_after_ft": round(r["top1"], 2), "base_test_top1": round(b["top1"], 2),
            "macs_M": round(r["macs"] / 1e6, 2), "macs_frac": round(r["macs"] / b["macs"], 3),
            "params_M": round(r["params"] / 1e6, 3), "cpu_ms_b1": round(r["latency_ms"], 2),
            # paired (interleaved with the unpruned model) when the run has it: robust to drifting CPU speed
            "latency_frac": round(r.get("latency_vs_base") or r["latency_ms"] / b["latency_ms"], 3),
            "ort_ms_b1": round(r["ort_latency_ms"], 2) if r.get("ort_latency_ms") else None,
            "search_s": round(s["seconds"]), "total_s": round(time.time() - t0),
        })
        print(json.dumps(rows[-1]), flush=True)

    if not rows:
        return 1
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    tuning = (f"fine-tune {args.finetune_epochs} epoch(s) x {args.max_batches_per_epoch} batches with distillation"
              if args.finetune_epochs else "no fine-tuning (test_top1_after_ft is the pruned, BN-recalibrated model)")
    lines = [f"`{command}`", "",
             f"Protocol: {args.protocol} (search on the search half, test top-1 on the report half); "
             f"budget {args.budget} (unless the row says otherwise); {args.search_evals} evaluations; {tuning}. "
             "Latency: PyTorch and ONNX Runtime, batch 1, "
             f"CPU with {torch.get_num_threads()} intra-op thread(s); *_frac columns are relative to the unpruned model "
             "(latency_frac timed in interleaved pairs with it).", "",
             "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(str(v) for v in row.values()) + " |" for row in rows]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
