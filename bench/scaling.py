"""Candidate evaluations per second against the number of Ray workers (``--workers``).

    python bench/scaling.py --model resnet20 --data cifar10-jpeg --workers 0,1,2 --candidates 12

For each worker count, the same ``--candidates`` structures (random allocations solved onto
the budget, fixed seed) are scored through ``Evaluator.prefetch`` — in the job's own process
for 0 workers, else on a ``RayPool`` of that many actors (each holding the model and data
once; starting them is timed separately and not counted). Prints a markdown table with the
machine, and checks that every worker count gives the same top-1 for every structure.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pruner.runs.config import RunConfig  # noqa: E402
from pruner.runs.job import Session  # noqa: E402
from pruner.runs.workers import RayPool  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet20")
    p.add_argument("--weights", default="pretrained")
    p.add_argument("--data", default="cifar10-jpeg")
    p.add_argument("--protocol", default="test-halves")
    p.add_argument("--budget", default="flops=0.5")
    p.add_argument("--workers", default="0,1,2", help="comma-separated worker counts (0 = in-process)")
    p.add_argument("--candidates", type=int, default=12)
    p.add_argument("--search-images", type=int, default=1000)
    p.add_argument("--recal-images", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--ray-address", default=None)
    args = p.parse_args()

    cfg = RunConfig(model=args.model, weights=args.weights, data=args.data, protocol=args.protocol,
                    budget=args.budget, search_images=args.search_images, recal_images=args.recal_images,
                    device=args.device, strategy="random", search_evals=None)
    session = Session(cfg)
    rng = np.random.default_rng(0)
    structures = []
    ev0 = session.evaluator(max_evals=None)
    for _ in range(args.candidates):
        structures.append(ev0.solve((rng.dirichlet([1.0] * len(session.space)) + 1e-6).tolist()).counts)

    rows, scores = [], {}
    for n in [int(x) for x in args.workers.split(",")]:
        ev = session.evaluator(max_evals=None)
        pool, start_s = None, 0.0
        if n > 0:
            t0 = time.perf_counter()
            pool = RayPool({**cfg.to_dict(), "workers": n}, session.ranking, n, address=args.ray_address,
                           device=session.device)
            start_s = time.perf_counter() - t0
            ev.pool = pool
        try:
            t0 = time.perf_counter()
            if pool is None:
                top1 = [ev.evaluate(c).top1 for c in structures]
            else:
                ev.prefetch(structures)
                top1 = [ev.evaluate(c).top1 for c in structures]
            wall = time.perf_counter() - t0
        finally:
            if pool is not None:
                ev.pool = None
                pool.close()
        scores[n] = top1
        rows.append((n, pool.threads if pool else torch.get_num_threads(), start_s, wall, len(structures) / wall))
        print(f"workers={n}: {len(structures)} candidates in {wall:.1f} s = {len(structures) / wall:.3f}/s "
              f"(start-up {start_s:.1f} s)", flush=True)

    same = all(v == next(iter(scores.values())) for v in scores.values())
    machine = (f"{platform.machine()}, {os.cpu_count()} CPU cores" + (
        f", {torch.cuda.get_device_name(0)}" if session.device.type == "cuda" else ", no GPU"))
    print(f"\n{args.model}, {args.data}, {args.budget}, {args.search_images} search + {args.recal_images} "
          f"recalibration images, device {session.device}; machine: {machine}")
    print("| workers | threads each | start-up (s) | candidates/s | speed-up |\n|---|---|---|---|---|")
    for n, threads, start_s, wall, rate in rows:
        print(f"| {n or 'in-process'} | {threads} | {start_s:.1f} | {rate:.3f} | {rate / rows[0][4]:.2f}x |")
    print(f"\nsame top-1 for every structure with every worker count: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
