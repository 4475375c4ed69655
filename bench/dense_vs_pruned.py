"""Pruned vs dense at equal training: fine-tune the unpruned model exactly as a run fine-tuned its pruned one.

A pruned model fine-tuned for N epochs is often compared with the original's unchanged weights,
which flatters it when the original was never trained on this data (here: the shared ResNets,
trained on the original CIFAR-10, scored on a JPEG copy). This bench reads a finished run,
fine-tunes the *unpruned* model with the run's own fine-tuning settings (same data split,
epochs, batches per epoch, learning rate, distillation from the original model, seed), and
prints both side by side (report split top-1 before and after fine-tuning, MACs, params):

    python bench/dense_vs_pruned.py --run runs/r20                      # a finished run directory
    python bench/dense_vs_pruned.py --run runs/r20 -- --model resnet20 --weights pretrained \\
        --data cifar10-jpeg --budget flops=0.5 --strategy uniform --finetune-epochs 2 \\
        --max-batches-per-epoch 20                                      # run `python -m pruner prune` first

The table is written to ``<run>/dense_vs_pruned.md`` (and ``.json``) as well. For the dense
model "before" is the run's base top-1, and distillation is from a frozen copy of itself
(self-distillation: the loss the pruned model trained with, with the same teacher).
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pruner.errors import PrunerError  # noqa: E402
from pruner.evaluate import accuracy  # noqa: E402
from pruner.finetune import finetune  # noqa: E402
from pruner.measure import count_cost  # noqa: E402
from pruner.runs.config import RunConfig  # noqa: E402
from pruner.runs.job import Session, load_checkpoint  # noqa: E402
from pruner.runs.rundir import RunDir, Status  # noqa: E402


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def compare(run_path: Path, *, device: str | None = None) -> dict:
    """Re-score the run's pruned model before/after fine-tuning and fine-tune the dense one the same way."""
    run = RunDir(run_path)
    summary = run.summary()
    if not summary or summary.get("status") != Status.DONE:
        raise PrunerError(f"{run_path} is not a finished run (no summary.json with status done); "
                          "finish it first or pass the prune arguments after --")
    config = RunConfig.from_dict(run.config())
    if config.finetune.epochs == 0:
        raise PrunerError(f"the run in {run_path} did not fine-tune (--finetune-epochs 0): nothing to compare at equal training")
    if device:
        config.device = device
    session = Session(config)
    data = session.data
    report = data.report.subset(min(config.report_images, len(data.report))) if config.report_images else data.report

    def top1(model) -> float:
        return accuracy(model, report, mean=data.mean, std=data.std, device=session.device)["top1"]

    found = run.search_result()
    dense = copy.deepcopy(session.model)                 # the original weights
    if found.get("model"):                               # a strategy that trained the weights (joint): as the run did
        saved = torch.load(run.path / found["model"], map_location=session.device, weights_only=True)
        session.model.load_state_dict(saved["state_dict"])
        session.ranking = list(saved["ranking"])
    teacher = copy.deepcopy(session.model).eval()        # what the run distilled from
    pruned_before, _ = session.build_pruned(found["counts"])
    pruned_after, _ = load_checkpoint(run.artifact_path("checkpoint"))
    dense_before = top1(dense)
    t0 = time.perf_counter()
    history = finetune(dense, data, config.finetune, teacher=teacher, device=session.device)
    dense_seconds = time.perf_counter() - t0
    rows = []
    for name, model, before in (("dense (unpruned)", dense, dense_before),
                                ("pruned", pruned_after, top1(pruned_before))):
        cost = count_cost(copy.deepcopy(model).cpu().eval(), data.input_size)
        nonzero = sum(int((p != 0).sum()) for p in model.parameters())   # what a sparse format stores
        rows.append({"model": name, "macs_M": round(cost.macs / 1e6, 2), "params_M": round(cost.params / 1e6, 3),
                     "nonzero_params_M": round(nonzero / 1e6, 3),
                     "top1_before_ft": round(before, 2), "top1_after_ft": round(top1(model.to(session.device)), 2)})
    ft = config.finetune
    return {"run": str(run_path), "model": config.model, "data": data.name, "protocol": config.protocol,
            "budget": config.budget, "strategy": config.strategy, "seed": config.seed,
            "report_images": len(report), "finetune": ft.to_dict(), "machine": _machine(session.device),
            "rows": rows, "dense_finetune_seconds": round(dense_seconds, 1),
            "dense_final_loss": history[-1]["loss"] if history else None,
            "run_pruned_top1": summary["pruned"]["top1"]}


def markdown(result: dict, command: str) -> str:
    ft = result["finetune"]
    batches = (f"at most {ft['max_batches_per_epoch']} batches of {ft['batch_size']} per epoch"
               if ft.get("max_batches_per_epoch") else f"full epochs, batch {ft['batch_size']}")
    kd = (f"distillation from the original (weight {ft['kd_weight']}, T={ft['kd_temperature']})"
          if ft["kd_weight"] > 0 else "cross-entropy only")
    lines = [f"`{command}`", "",
             f"{result['model']} on {result['data']}, protocol {result['protocol']} (top-1 on {result['report_images']} "
             f"report images), run budget {result['budget']} ({result['strategy']}), seed {result['seed']}, one seed; "
             f"both fine-tuned {ft['epochs']} epoch(s), {batches}, lr {ft['lr']}, {kd}; {result['machine']}.", "",
             "| model | MACs (M) | params (M) | non-zero params (M) | report top-1 before FT | report top-1 after FT |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['macs_M']} | {r['params_M']} | {r['nonzero_params_M']} | "
                     f"{r['top1_before_ft']:.2f} | {r['top1_after_ft']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "python bench/dense_vs_pruned.py " + " ".join(shlex.quote(a) for a in argv)
    prune_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, prune_args = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="run directory (created by the prune arguments after --, if given)")
    p.add_argument("--device", default=None, help="override the run's device (auto, cpu, cuda)")
    args = p.parse_args(argv)
    run_path = Path(args.run)
    try:
        if prune_args and not (run_path / "summary.json").exists():
            from pruner.cli import main as cli_main

            rc = cli_main(["prune", *prune_args, "--out", str(run_path)])
            if rc != 0:
                return rc
        result = compare(run_path, device=args.device)
    except PrunerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = markdown(result, command)
    (run_path / "dense_vs_pruned.md").write_text(text)
    (run_path / "dense_vs_pruned.json").write_text(json.dumps(result, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
