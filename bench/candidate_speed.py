"""Candidate evaluations per second (the search's inner loop), with the time breakdown.

    python bench/candidate_speed.py --model resnet56 --weights pretrained --data cifar10-jpeg --candidates 8

Each candidate is a random allocation solved onto the budget, then: the pruned network
(channel masks on the unpruned model, or physical surgery: --scoring, default auto = masks on
CUDA, surgery on CPU), BN recalibration on --recal-images training images, top-1 on
--search-images search images. Runs on CUDA when available (or --device). Prints where the
time goes: solver (cost-model bisection), surgery or masks, graph (the CPU's lean graph),
recalibration, scoring.

``--compare old,new`` scores the same candidates with two evaluator set-ups in one process,
interleaved (A B, B A, A B, ...: each candidate is scored by both, the order alternating), and
prints each one's candidates/s, process CPU time, the median of the per-candidate time ratios and
whether the two gave the same top-1 for every candidate. On a shared machine the absolute
figures drift with the other load; the ratio of interleaved pairs is what to compare. Set-ups:

* ``old``: physical surgery scored eagerly (``lean=False``), scoring batch 250 — the previous CPU path;
* ``new``: the current defaults (lean graph: in-place element-wise ops, BN folded after recalibration;
  on a CPU, a batch's structures scored on threads, ``EvaluatorSettings.threads`` auto);
* ``fp32``: the defaults in float32 (``EvaluatorSettings.amp=False``); ``bf16``: with bf16 autocast
  while recalibrating and scoring (``amp=True``; no longer a default: the CPU search scores in float32,
  docs/results.md "Candidate evaluation speed" says why);
  the output adds the two set-ups' top-1 differences and the Spearman rank correlation of their top-1s;
* ``serial``: the defaults, one structure at a time (``threads=1``); ``threads-N``: N at a time;
* ``lean-bN``: the lean graph with scoring batch N; ``eager-bN``: eager with scoring batch N.

``--batch K`` proposes the candidates K at a time, as the strategies do (``Evaluator.prefetch``,
then ``evaluate`` each): only then can a batch be scored on threads (``rl``'s updates propose 2,
``random`` 16). Per-candidate figures are a batch's time over K.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pruner.runs.config import RunConfig  # noqa: E402
from pruner.runs.job import Session  # noqa: E402
from pruner.search.evaluator import Evaluator, EvaluatorSettings  # noqa: E402


def setup_settings(name: str, base: dict) -> EvaluatorSettings:
    if name == "new":
        return EvaluatorSettings(**base)
    if name == "bf16":
        return EvaluatorSettings(**base, amp=True)
    if name == "fp32":
        return EvaluatorSettings(**base, amp=False)
    if name == "serial":
        return EvaluatorSettings(**base, threads=1)
    if name.startswith("threads-") and name[8:].isdigit():
        return EvaluatorSettings(**base, threads=int(name[8:]))
    if name == "old":
        return EvaluatorSettings(**base, lean=False, batch_size=250, amp=False)
    for prefix, lean in (("lean-b", True), ("eager-b", False)):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            return EvaluatorSettings(**base, lean=lean, batch_size=int(name[len(prefix):]))
    raise SystemExit(f"unknown set-up {name!r}: use old, new, fp32, bf16, serial, threads-N, lean-bN or eager-bN")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (ties get their mean rank)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def breakdown(ev: Evaluator, n: int, total: float, threads: int) -> None:
    if threads > 1:
        print(f"  (recalibration, graph and evaluation are summed over {threads} scoring threads: "
              "thread-seconds, so the parts add up to more than the wall time)")
    for k, v in ev.timing.items():
        print(f"  {k:<14} {1000 * v / n:8.0f} ms/candidate  ({100 * v / total:4.1f} %)")
    if threads == 1:
        rest = total - sum(ev.timing.values())
        print(f"  {'other':<14} {1000 * rest / n:8.0f} ms/candidate  ({100 * rest / total:4.1f} %)")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet56")
    p.add_argument("--weights", default="pretrained")
    p.add_argument("--data", default="cifar10-jpeg")
    p.add_argument("--budget", default="flops=0.5")
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--search-images", type=int, default=1000)
    p.add_argument("--recal-images", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--scoring", default="auto", choices=["auto", "mask", "physical"])
    p.add_argument("--round-to", type=int, default=None, help="default: 8 on CUDA, 1 on CPU")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--batch", type=int, default=1, metavar="K", help="candidates proposed K at a time (prefetch)")
    p.add_argument("--compare", default=None, metavar="A,B",
                   help="two evaluator set-ups scored interleaved on the same candidates (e.g. old,new)")
    args = p.parse_args()
    if args.batch < 1 or args.candidates % args.batch:
        raise SystemExit(f"--batch must divide --candidates ({args.candidates}); got {args.batch}")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = RunConfig(model=args.model, weights=args.weights, data=args.data, protocol="test-halves", budget=args.budget,
                    search_images=args.search_images, recal_images=args.recal_images, device=args.device,
                    round_to=args.round_to)
    t0 = time.perf_counter()
    s = Session(cfg)
    setup = time.perf_counter() - t0
    base = dict(search_images=cfg.search_images, recal_images=cfg.recal_images, scoring=args.scoring)
    names = args.compare.split(",") if args.compare else ["new"]
    if len(names) not in (1, 2):
        raise SystemExit("--compare takes two set-ups, e.g. old,new")
    evs = [Evaluator(s.model, s.space, s.data, s.ranking, cfg.budget_obj, device=s.device,
                     settings=setup_settings(n, base)) for n in names]
    rng = np.random.default_rng(0)
    allocations = [rng.dirichlet([1.0] * len(s.space)).tolist() for _ in range(args.candidates)]
    for ev in evs:  # warm-up (not timed), the threads' path too
        warm = [ev.solve([1.0] * len(s.space)).counts, ev.solve([0.5] * len(s.space)).counts]
        ev.prefetch(warm)
        for counts in warm:
            ev.evaluate(counts)
        for k in ev.timing:
            ev.timing[k] = 0.0
    k = args.batch
    batches = [allocations[i:i + k] for i in range(0, len(allocations), k)]
    wall = [[0.0] * len(batches) for _ in evs]
    cpu = [[0.0] * len(batches) for _ in evs]
    top1 = [[0.0] * args.candidates for _ in evs]
    solver = [0.0 for _ in evs]
    for b, batch in enumerate(batches):
        order = range(len(evs)) if b % 2 == 0 else reversed(range(len(evs)))
        for j in order:
            ev = evs[j]
            c0, t0 = time.process_time(), time.perf_counter()
            proposals = [ev.solve(a).counts for a in batch]
            solver[j] += time.perf_counter() - t0
            ev.prefetch(proposals)
            for i, counts in enumerate(proposals):
                top1[j][b * k + i] = ev.evaluate(counts).top1
            if s.device.type == "cuda":
                torch.cuda.synchronize()
            wall[j][b], cpu[j][b] = time.perf_counter() - t0, time.process_time() - c0
    dev = torch.cuda.get_device_name() if s.device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {dev}; torch {torch.__version__}; model {args.model}, {args.search_images} search images, "
          f"{args.recal_images} recal images; round_to: {s.space.round_to}; proposed {k} at a time")
    print(f"setup (data, model, graph, importance): {setup:.1f} s")
    n = args.candidates
    for j, (name, ev) in enumerate(zip(names, evs)):
        total = sum(wall[j])
        ev.timing["solver"] = solver[j]
        notes = "; ".join(x for x in (ev.scoring_note, ev.lean_note) if x)
        print(f"[{name}] scoring: {ev.scoring}{', lean graph' if ev.lean and ev.scoring == 'physical' else ''}; "
              f"batch {ev.settings.batch_size or 'default'}; scoring threads {ev.scoring_threads()}"
              + (f" ({notes})" if notes else ""))
        print(f"{n} candidates in {total:.1f} s: {n / total:.3f} candidates/s, {1000 * total / n:.0f} ms each; "
              f"process CPU time {1000 * sum(cpu[j]) / n:.0f} ms each")
        breakdown(ev, n, total, ev.scoring_threads() if k > 1 else 1)
    if len(evs) == 2:
        ratios = np.array(wall[1]) / np.array(wall[0])
        cpu_ratios = np.array(cpu[1]) / np.array(cpu[0])
        same = top1[0] == top1[1]
        print(f"{names[1]} / {names[0]} time per {'batch' if k > 1 else 'candidate'}, interleaved pairs: median {np.median(ratios):.3f} "
              f"(range {ratios.min():.3f}-{ratios.max():.3f}); CPU time median {np.median(cpu_ratios):.3f}; "
              f"speed-up {1 / np.median(ratios):.2f}x")
        print(f"same top-1 for every candidate: {same}" + ("" if same else f" ({top1[0]} vs {top1[1]})"))
        a, b = np.array(top1[0]), np.array(top1[1])
        print(f"top-1 difference {names[1]} - {names[0]}: mean {np.mean(b - a):+.3f}, max |d| {np.abs(b - a).max():.2f} "
              f"points; Spearman rank correlation {spearman(a, b):.4f} over {n} candidates")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
