"""Candidate evaluations per second (the search's inner loop), with the time breakdown.

    python bench/candidate_speed.py --model resnet56 --weights pretrained --data cifar10-jpeg --candidates 8

Each candidate is a random allocation solved onto the budget, then: physical surgery,
BN recalibration on --recal-images training images, top-1 on --search-images search images.
Runs on CUDA when available (or --device).
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
    args = p.parse_args()
    cfg = RunConfig(model=args.model, weights=args.weights, data=args.data, protocol="test-halves", budget=args.budget,
                    search_images=args.search_images, recal_images=args.recal_images, device=args.device)
    t0 = time.perf_counter()
    s = Session(cfg)
    setup = time.perf_counter() - t0
    ev = s.evaluator(max_evals=None)
    rng = np.random.default_rng(0)
    ev.evaluate(ev.solve([1.0] * len(s.space)).counts)  # warm-up (not timed)
    for k in ev.timing:
        ev.timing[k] = 0.0
    t0 = time.perf_counter()
    for _ in range(args.candidates):
        ev.evaluate(ev.solve(rng.dirichlet([1.0] * len(s.space)).tolist()).counts)
    total = time.perf_counter() - t0
    dev = torch.cuda.get_device_name() if s.device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {dev}; model {args.model}, {args.search_images} search images, {args.recal_images} recal images")
    print(f"setup (data, model, graph, importance): {setup:.1f} s")
    print(f"{args.candidates} candidates in {total:.1f} s: {args.candidates / total:.3f} candidates/s, "
          f"{1000 * total / args.candidates:.0f} ms each")
    for k, v in ev.timing.items():
        print(f"  {k:<14} {1000 * v / args.candidates:8.0f} ms/candidate  ({100 * v / total:4.1f} %)")
    rest = total - sum(ev.timing.values())
    print(f"  {'solver+other':<14} {1000 * rest / args.candidates:8.0f} ms/candidate  ({100 * rest / total:4.1f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
