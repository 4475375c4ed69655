"""How close the New run page's estimate (pruner.runs.estimate) comes to real runs on this machine.

    python bench/run_estimate.py --out bench/results/run_estimate --quick                       # the page's defaults
    python bench/run_estimate.py --out bench/results/run_estimate --model resnet56 --evals 40 --epochs 1 \\
        --max-batches 60

For each setting: the model summary is built in its child process as the page builds it, the run is
estimated from it, then the run is made (``run_job``, in this process) and its phases are read from its
events (loading = until the unpruned model is measured; unpruned model = until the search starts;
search; fine-tuning; report = export and the pruned model's report). Prints estimate and actual per
phase. Wall-clock figures: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pruner.finetune import FinetuneConfig  # noqa: E402
from pruner.model_summary import summary_in_child  # noqa: E402
from pruner.runs.config import RunConfig  # noqa: E402
from pruner.runs.estimate import estimate_run  # noqa: E402
from pruner.runs.job import run_job  # noqa: E402
from pruner.runs.rundir import RunDir, Status  # noqa: E402

PHASES = ("load", "base", "search", "finetune", "report")


def actual_phases(run: RunDir) -> dict[str, float]:
    """Seconds per phase from the run's status events."""
    times: dict[str, float] = {}
    status = [e for e in run.events("status")]
    first = status[0]["time"]
    for e in status:
        times.setdefault(e["status"], e["time"])
    end = status[-1]["time"]
    base = times.get(Status.MEASURING_BASE, first)
    search = times.get(Status.SEARCHING, base)
    done = times.get(Status.SEARCH_DONE, search)
    ft = times.get(Status.FINE_TUNING)
    after_ft = min((t for s, t in times.items() if ft is not None and t > ft and s != Status.FINE_TUNING),
                   default=done)
    return {"load": base - first, "base": search - base, "search": done - search,
            "finetune": (after_ft - ft) if ft is not None else 0.0,
            "report": end - (after_ft if ft is not None else done)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true", help="the New run page's quick defaults (studio.forms.QUICK)")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data", default="cifar10-jpeg")
    p.add_argument("--weights", default="pretrained")
    p.add_argument("--budget", default="flops=0.5")
    p.add_argument("--strategy", default="rl")
    p.add_argument("--evals", type=int, default=16)
    p.add_argument("--search-images", type=int, default=1000)
    p.add_argument("--report-images", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=0)
    p.add_argument("--max-batches", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args(argv)
    ft = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size, max_batches_per_epoch=args.max_batches)
    cfg = RunConfig(model=args.model, data=args.data, weights=args.weights, budget=args.budget,
                    strategy=args.strategy, search_evals=args.evals, search_images=args.search_images,
                    report_images=args.report_images, finetune=ft, device="cpu", export=True)
    if args.quick:
        from studio.forms import QUICK
        cfg = dataclasses.replace(cfg, search_evals=QUICK["search_evals"], search_images=QUICK["search_images"],
                                  recal_images=QUICK["recal_images"], report_images=QUICK["report_images"],
                                  latency_repeats=QUICK["latency_repeats"],
                                  finetune=FinetuneConfig(epochs=QUICK["finetune_epochs"],
                                                          max_batches_per_epoch=QUICK["max_batches"],
                                                          batch_size=QUICK["batch_size"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summary_in_child(cfg.to_dict())
    if summary.get("error"):
        raise SystemExit(summary["error"])
    est = estimate_run(cfg, summary)
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    result = run_job(cfg, run_dir)
    if result["status"] != "done":
        raise SystemExit(result.get("error"))
    act = actual_phases(RunDir(run_dir))
    rows = [{"phase": ph, "estimate_s": getattr(est, ph), "actual_s": act[ph]} for ph in PHASES]
    rows.append({"phase": "total", "estimate_s": est.total, "actual_s": sum(act.values())})
    print(f"{cfg.model} on {cfg.data}, {cfg.strategy} {cfg.budget}, {cfg.search_evals} evaluations x "
          f"{cfg.search_images} images, {cfg.finetune.epochs} epochs; notes: {est.notes or 'none'}")
    print(f"{'phase':<10} {'estimate s':>11} {'actual s':>9} {'ratio':>6}")
    for r in rows:
        e, a = r["estimate_s"], r["actual_s"]
        ratio = f"{e / a:6.2f}" if e is not None and a else "     —"
        print(f"{r['phase']:<10} {e if e is not None else float('nan'):>11.1f} {a:>9.1f} {ratio}")
    (out / "estimate.json").write_text(json.dumps({"config": cfg.to_dict(), "rows": rows, "notes": est.notes},
                                                  indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
