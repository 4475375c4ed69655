"""Re-measure the latency of finished runs side by side, in one process, interleaved.

Latency measured inside separate runs drifts with whatever else the machine did at the
time. This script loads the pruned checkpoint (and the exported ONNX file) of every run
directory given, plus the unpruned architecture of the first one, and times them all in
interleaved pairs with the unpruned model (``--repeats`` pairs per round, ``--rounds``
rounds), so that a machine whose speed drifts (seen here: twofold for half a minute) still
gives meaningful ratios; the table shows the median over rounds and the rounds' spread.

    python bench/latency_table.py bench/results/flops50/* --batch 1 --batch 64

Prints a markdown table (and writes ``--out`` as CSV when given). Weights do not affect
latency, so the unpruned model is rebuilt without them.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pruner.export import export_onnx  # noqa: E402
from pruner.measure import count_cost, ort_relative_latency, relative_latency  # noqa: E402
from pruner.models import ModelSpec, build_model  # noqa: E402
from pruner.runs.job import load_checkpoint  # noqa: E402
from pruner.runs.rundir import RunDir, Status  # noqa: E402


def _entries(run_dirs: list[Path], tmp: Path) -> list[dict]:
    entries = []
    for i, d in enumerate(run_dirs):
        rd = RunDir(d)
        summary = rd.summary()
        if not summary or summary.get("status") != Status.DONE:
            print(f"skipping {d}: not a finished run", file=sys.stderr)
            continue
        model, ckpt = load_checkpoint(rd.artifact("checkpoint", summary))
        config = rd.config() or {}
        input_size = tuple(ckpt["input_size"])
        if not entries:  # the unpruned architecture, once
            base = build_model(ModelSpec(**{**ckpt["model_spec"], "weights": None})).eval()
            base_onnx = tmp / "base.onnx"
            export_onnx(base, base_onnx, input_size=input_size, mean=ckpt["mean"], std=ckpt["std"],
                        class_names=ckpt["classes"], sample=torch.randn(2, *input_size))
            entries.append({"name": "unpruned", "budget": "-", "model": base, "onnx": base_onnx,
                            "input_size": input_size, "top1": (summary.get("base") or {}).get("top1")})
        onnx = rd.artifact("onnx", summary)
        entries.append({"name": config.get("strategy", d.name), "budget": config.get("budget", "?"), "model": model,
                        "onnx": onnx, "input_size": input_size, "top1": summary["pruned"]["top1"],
                        "run": str(d)})
    return entries


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories (with summary.json)")
    p.add_argument("--batch", type=int, action="append", help="batch size (repeatable; default 1)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: PyTorch's default)")
    p.add_argument("--out", type=Path, help="also write the table as CSV here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = args.batch or [1]
    with tempfile.TemporaryDirectory() as tmp:
        entries = _entries([d for d in args.runs if d.is_dir()], Path(tmp))
        if len(entries) < 2:
            print("no finished runs given", file=sys.stderr)
            return 1
        # each pruned model is timed in interleaved pairs with the unpruned one (drift cancels);
        # pairs[(entry index, backend, batch)] -> per-round (ms, reference ms, ratio)
        pairs: dict[tuple, list[tuple[float, float, float]]] = {}
        base = entries[0]
        for _ in range(args.rounds):
            for i, e in enumerate(entries[1:], start=1):
                for b in batches:
                    m = relative_latency(e["model"], base["model"], e["input_size"], batch_size=b,
                                         repeats=args.repeats, warmup=5)
                    pairs.setdefault((i, "torch", b), []).append((m["ms"], m["reference_ms"], m["ratio"]))
                    if e["onnx"] is not None:
                        m = ort_relative_latency(e["onnx"], base["onnx"], e["input_size"], batch_size=b,
                                                 repeats=args.repeats, warmup=5)
                        pairs.setdefault((i, "ort", b), []).append((m["ms"], m["reference_ms"], m["ratio"]))
    rows = []
    for i, e in enumerate(entries):
        cost = count_cost(e["model"], e["input_size"])
        row = {"model": e["name"], "budget": e["budget"], "report_top1": round(e["top1"], 2) if e["top1"] else None,
               "macs_M": round(cost.macs / 1e6, 2)}
        for b in batches:
            for backend in ("torch", "ort"):
                if i == 0:  # the unpruned model: its reference times from every pair
                    vals = [ref for (j, be, bb), v in pairs.items() if be == backend and bb == b for _, ref, _ in v]
                    if vals:
                        row[f"{backend}_ms_b{b}"] = round(statistics.median(vals), 3)
                        row[f"{backend}_frac_b{b}"] = 1.0
                        row[f"{backend}_frac_spread_b{b}"] = "-"
                    continue
                vals = pairs.get((i, backend, b))
                if not vals:
                    continue
                ratios = [r for _, _, r in vals]
                row[f"{backend}_ms_b{b}"] = round(statistics.median(ms for ms, _, _ in vals), 3)
                row[f"{backend}_frac_b{b}"] = round(statistics.median(ratios), 3)
                row[f"{backend}_frac_spread_b{b}"] = f"{min(ratios):.3f}-{max(ratios):.3f}"
        rows.append(row)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    print(f"`{command}`\n")
    print(f"CPU, {torch.get_num_threads()} intra-op thread(s) (PyTorch and ONNX Runtime). Each pruned model is timed "
          f"in {args.repeats} pairs interleaved with the unpruned one, {args.rounds} rounds; *_frac is the median "
          "over rounds of the median per-pair ratio (drifting machine speed cancels), *_ms the median time, "
          "spread = min-max of the rounds' ratios.\n")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    if args.out:
        with open(args.out, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
