"""Candidate evaluations per second (the search's inner loop), with the time breakdown.

    python bench/candidate_speed.py --model resnet56 --weights pretrained --data cifar10-jpeg --candidates 8

Each candidate is a random allocation solved onto the budget, then: the pruned network
(channel masks on the unpruned model, or physical surgery: --scoring, default auto = masks on
CUDA, surgery on CPU), BN recalibration on --recal-images training images, top-1 on
--search-images search images. Runs on CUDA when available (or --device). Prints where the
time goes: solver (cost-model bisection), surgery or masks, recalibration, scoring.
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
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = RunConfig(model=args.model, weights=args.weights, data=args.data, protocol="test-halves", budget=args.budget,
                    search_images=args.search_images, recal_images=args.recal_images, device=args.device,
                    round_to=args.round_to)
    t0 = time.perf_counter()
    s = Session(cfg)
    setup = time.perf_counter() - t0
    ev = Evaluator(s.model, s.space, s.data, s.ranking, cfg.budget_obj, device=s.device,
                   settings=EvaluatorSettings(search_images=cfg.search_images, recal_images=cfg.recal_images,
                                              scoring=args.scoring))
    rng = np.random.default_rng(0)
    ev.evaluate(ev.solve([1.0] * len(s.space)).counts)  # warm-up (not timed)
    for k in ev.timing:
        ev.timing[k] = 0.0
    solver = 0.0
    c0 = time.process_time()
    t0 = time.perf_counter()
    for _ in range(args.candidates):
        t1 = time.perf_counter()
        counts = ev.solve(rng.dirichlet([1.0] * len(s.space)).tolist()).counts
        solver += time.perf_counter() - t1
        ev.evaluate(counts)
    if s.device.type == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - t0
    cpu = time.process_time() - c0
    ev.timing["solver"] = solver
    dev = torch.cuda.get_device_name() if s.device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {dev}; torch {torch.__version__}; model {args.model}, {args.search_images} search images, "
          f"{args.recal_images} recal images; scoring: {ev.scoring}; round_to: {s.space.round_to}"
          + (f" ({ev.scoring_note})" if ev.scoring_note else ""))
    print(f"setup (data, model, graph, importance): {setup:.1f} s")
    print(f"{args.candidates} candidates in {total:.1f} s: {args.candidates / total:.3f} candidates/s, "
          f"{1000 * total / args.candidates:.0f} ms each; process CPU time {1000 * cpu / args.candidates:.0f} ms each "
          "(on a shared machine, CPU time / threads is closer to the quiet-machine wall time)")
    for k, v in ev.timing.items():
        print(f"  {k:<14} {1000 * v / args.candidates:8.0f} ms/candidate  ({100 * v / total:4.1f} %)")
    rest = total - sum(ev.timing.values())
    print(f"  {'other':<14} {1000 * rest / args.candidates:8.0f} ms/candidate  ({100 * rest / total:4.1f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
