"""Why CPU latency lags the MACs reduction, measured: ResNet-56 pruned to a flops budget.

For the unpruned model and uniform prunings of it (every group the same keep ratio, solved
onto ``--budget``, with each ``--round-to``), in one process:

* **paired ratios** pruned/unpruned (interleaved pairs, :func:`pruner.measure.paired_timing`;
  median of the per-pair ratios and the middle half) at each ``--batch``, for PyTorch eager,
  PyTorch with BatchNorm folded into the convolutions (``torch.jit.freeze`` of a trace: what a
  deployment would run; oneDNN fuses conv + BN + ReLU), and ONNX Runtime (its graph optimiser
  fuses the same), each divided by the MACs ratio (the issue's target: <= 1.25);
* **where the time goes**: ``torch.profiler`` self CPU time per op kind (convolutions, batch norm,
  ReLU, adds, shortcut routing, the rest) for both models, so the part that does not shrink with
  the MACs is visible;
* **the fixed cost**: eager latency at several keep ratios, fitted as ``t = a + b * MACs``; ``a``
  (the time that stays when the MACs go) bounds the ratio any pruning can reach at that batch:
  ``(a + b * M * r) / (a + b * M)`` for MACs ratio ``r``.

    python bench/latency_vs_macs.py --model resnet56 --budget 0.5 --batch 1 --batch 64 --round-to 1 --round-to 8

Weights do not change latency: the model is built with random weights. Timings need a quiet
machine: run nothing else meanwhile (the script says the threads it used).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pruner.budget import Budget, solve  # noqa: E402
from pruner.export import export_onnx  # noqa: E402
from pruner.measure import ort_relative_latency, paired_timing, relative_latency  # noqa: E402
from pruner.models import load_model  # noqa: E402
from pruner.pruning.importance import channel_scores, ranking_from_scores  # noqa: E402
from pruner.pruning.space import PruningSpace  # noqa: E402

INPUT = (3, 32, 32)


def frozen_trace(model: torch.nn.Module, batch: int):
    """``torch.jit.freeze`` of a trace at ``batch``: BatchNorm folded, conv + ReLU fused by oneDNN."""
    with torch.no_grad():
        traced = torch.jit.trace(model.eval(), torch.randn(batch, *INPUT))
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        x = torch.randn(batch, *INPUT)
        for _ in range(3):
            frozen(x)
    return frozen


def paired_frozen(model, reference, batch: int, repeats: int) -> dict:
    a, b = frozen_trace(model, batch), frozen_trace(reference, batch)
    x = torch.randn(batch, *INPUT)

    def run(m):
        def go():
            with torch.no_grad():
                m(x)
        return go

    return paired_timing(run(a), run(b), warmup=5, repeats=repeats)


def profile(model, batch: int, iters: int = 20) -> dict[str, float]:
    """Self CPU ms per forward by op kind."""
    from torch.profiler import ProfilerActivity, profile as prof

    x = torch.randn(batch, *INPUT)
    with torch.no_grad():
        for _ in range(3):
            model(x)
        with prof(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(iters):
                model(x)
    kinds: dict[str, float] = {}
    for e in p.key_averages():
        name = e.key
        kind = ("conv" if "conv" in name else "batch_norm" if "batch_norm" in name else
                "relu" if "relu" in name else "add" if name in ("aten::add", "aten::add_") else
                "shortcut" if name in ("aten::index_select", "aten::mul", "aten::slice") else "other")
        kinds[kind] = kinds.get(kind, 0.0) + e.self_cpu_time_total / 1000.0 / iters
    return kinds


def fixed_cost(model, space: PruningSpace, batch: int, keeps=(1.0, 0.75, 0.5, 0.35, 0.2), repeats: int = 20):
    """Eager ms at several uniform keep ratios and the line t = a + b * MACs through them."""
    macs, ms = [], []
    x = torch.randn(batch, *INPUT)
    for k in keeps:
        counts = space.counts([k] * len(space))
        m = model if k == 1.0 else space.prune(model, counts)[0].eval()
        with torch.no_grad():
            for _ in range(3):
                m(x)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                m(x)
                times.append((time.perf_counter() - t0) * 1000)
        macs.append(space.predict(counts=counts)[0] / 1e6)
        ms.append(statistics.median(times))
    b, a = np.polyfit(macs, ms, 1)
    return {"points": list(zip(macs, ms)), "a_ms": float(a), "b_ms_per_mmac": float(b)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet56")
    p.add_argument("--budget", type=float, default=0.5, help="flops budget (fraction of MACs kept)")
    p.add_argument("--batch", type=int, action="append", help="batch sizes (default 1 and 64)")
    p.add_argument("--round-to", type=int, action="append", help="round_to values (default 1 and 8)")
    p.add_argument("--repeats", type=int, default=40, help="pairs per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--variants", default="eager,frozen,ort", help="what to time: eager, frozen (BN folded), ort")
    p.add_argument("--no-profile", action="store_true", help="skip the fixed-cost fit and the per-op profiles")
    args = p.parse_args()
    batches = args.batch or [1, 64]
    rounds_to = args.round_to or [1, 8]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = load_model(args.model, num_classes=10)[0].eval()
    print(f"# {args.model}, flops={args.budget}, uniform; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batches {batches}, {args.rounds} rounds x {args.repeats} pairs")
    with tempfile.TemporaryDirectory() as tmp:
        base_onnx = Path(tmp) / "base.onnx"
        sample = torch.randn(2, *INPUT)
        export_onnx(base, base_onnx, input_size=INPUT, mean=[0.5] * 3, std=[0.25] * 3,
                    class_names=[str(i) for i in range(10)], sample=sample)
        space1 = PruningSpace(base, INPUT)
        space1.set_ranking(ranking_from_scores(channel_scores(base, space1)))
        for batch in ([] if args.no_profile else batches):
            fc = fixed_cost(base, space1, batch)
            m = space1.base_macs / 1e6
            r = args.budget
            bound = (fc["a_ms"] + fc["b_ms_per_mmac"] * m * r) / (fc["a_ms"] + fc["b_ms_per_mmac"] * m)
            print(f"\n## batch {batch}: eager ms vs MMACs "
                  + ", ".join(f"{mm:.1f}->{t:.2f}" for mm, t in fc["points"])
                  + f"; fit t = {fc['a_ms']:.2f} ms + {fc['b_ms_per_mmac'] * 1000:.3f} us/MMAC x MMACs: "
                  f"{fc['a_ms'] / (fc['a_ms'] + fc['b_ms_per_mmac'] * m):.0%} of the unpruned time does not shrink; "
                  f"a MACs ratio of {r} can reach at best {bound:.3f} ({bound / r:.2f}x the MACs ratio)")
            print("base self-CPU ms per forward: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(profile(base, batch).items())))
        rows = []
        for rt in rounds_to:
            space = PruningSpace(base, INPUT, round_to=rt)
            space.set_ranking(ranking_from_scores(channel_scores(base, space)))
            sol = solve(space, [1.0] * len(space), Budget("flops", args.budget))
            pruned = space.prune(base, sol.counts)[0].eval()
            onnx_path = Path(tmp) / f"pruned{rt}.onnx"
            export_onnx(pruned, onnx_path, input_size=INPUT, mean=[0.5] * 3, std=[0.25] * 3,
                        class_names=[str(i) for i in range(10)], sample=sample)
            for batch in batches:
                variants = set(args.variants.split(","))
                res = {k: [] for k in ("eager", "frozen", "ort") if k in variants}
                for _ in range(args.rounds):
                    if "eager" in res:
                        res["eager"].append(relative_latency(pruned, base, INPUT, batch_size=batch,
                                                             repeats=args.repeats, amp=False,
                                                             channels_last=False)["ratio"])
                    if "frozen" in res:
                        res["frozen"].append(paired_frozen(pruned, base, batch, args.repeats)["ratio"])
                    if "ort" in res:
                        res["ort"].append(ort_relative_latency(onnx_path, base_onnx, INPUT, batch_size=batch,
                                                               repeats=args.repeats)["ratio"])
                row = {"round_to": rt, "batch": batch, "macs_ratio": sol.achieved,
                       **{k: statistics.median(v) for k, v in res.items()},
                       **{f"{k}_spread": (min(v), max(v)) for k, v in res.items()}}
                rows.append(row)
                if args.no_profile:
                    continue
                prof = profile(pruned, batch)
                print(f"round_to {rt}, batch {batch}: pruned self-CPU ms per forward: "
                      + ", ".join(f"{k} {v:.2f}" for k, v in sorted(prof.items())))
        names = {"eager": "PyTorch eager", "frozen": "PyTorch frozen (BN folded)", "ort": "ONNX Runtime"}
        shown = [k for k in names if k in rows[0]]
        print("\n| round_to | batch | MACs ratio | " + " | ".join(f"{names[k]} | / MACs" for k in shown) + " |")
        print("|---|---|---|" + "---|---|" * len(shown))
        for r in rows:
            cells = []
            for k in shown:
                lo, hi = r[f"{k}_spread"]
                cells += [f"{r[k]:.3f} ({lo:.3f}-{hi:.3f})", f"{r[k] / r['macs_ratio']:.2f}"]
            print(f"| {r['round_to']} | {r['batch']} | {r['macs_ratio']:.3f} | " + " | ".join(cells) + " |")
        print("\n(ratios: median over rounds of each round's median per-pair ratio; in brackets the rounds' range)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
