"""ONNX Runtime CPU latency of a run's INT8 model against its fp32 pruned model, at several batches.

    python -m pruner prune --model resnet56 --weights pretrained --data cifar10-jpeg --budget flops=0.5 \\
        --strategy uniform --finetune-epochs 1 --max-batches-per-epoch 120 --quantize int8 --out runs/r56-int8
    python bench/int8_latency.py --run runs/r56-int8 --batches 1,8,64

Each batch is timed in interleaved pairs (``pruner.measure.ort_relative_latency``: INT8 and fp32
sessions alternate, no spin-waiting), ``--rounds`` times; the figure is the median of the
rounds' int8/fp32 time ratios (below 1: the INT8 model is faster). The run's summary gives the
accuracy (``quantized``: INT8 top-1 beside fp32 on the report split).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pruner.measure import ort_relative_latency  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a finished run directory with artifacts/model.int8.onnx")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    run = Path(args.run)
    int8, fp32 = run / "artifacts" / "model.int8.onnx", run / "artifacts" / "model.onnx"
    if not int8.is_file() or not fp32.is_file():
        raise SystemExit(f"{run} has no artifacts/model.int8.onnx and model.onnx; run it with --quantize int8")
    summary = json.loads((run / "summary.json").read_text())
    size = summary["data"]["input_size"]
    q = summary.get("quantized") or {}
    print(f"run {run.name}: INT8 top-1 {q.get('top1')}% vs fp32 {q.get('top1_fp32')}% on {q.get('images')} report "
          f"images; {os.path.getsize(int8) / 1e6:.3f} MB vs {os.path.getsize(fp32) / 1e6:.3f} MB; "
          f"CPU threads {os.cpu_count()}")
    for batch in (int(b) for b in args.batches.split(",")):
        rounds = [ort_relative_latency(int8, fp32, size, batch_size=batch, repeats=args.repeats)
                  for _ in range(args.rounds)]
        ratios = [r["ratio"] for r in rounds]
        print(f"batch {batch}: int8 {statistics.median(r['ms'] for r in rounds):.2f} ms, fp32 "
              f"{statistics.median(r['reference_ms'] for r in rounds):.2f} ms; int8/fp32 median "
              f"{statistics.median(ratios):.3f} (rounds {', '.join(f'{x:.3f}' for x in ratios)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
