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

An interrupted run is resumed when the command is given again. ``--dense-cache DIR`` keeps the dense
fine-tune, so runs that differ only in budget or strategy fine-tune the unpruned model once.
``--collect DIR`` builds the evidence table (per model, budget and strategy: pruned and dense top-1
after the same fine-tuning and the gap, mean ± std over the seeds; then per seed each strategy's gap
and the best one) from every comparison under
``DIR`` into ``DIR/evidence.md`` and ``DIR/evidence.jsonl``:

    for s in rl sensitivity uniform; do python bench/dense_vs_pruned.py --run bench/results/dvp-standard/r20-f50-$s-s0 \
        --dense-cache bench/results/dvp-standard/dense -- --model resnet20 --weights pretrained --data cifar10-jpeg \
        --protocol test-halves --budget flops=0.5 --strategy $s --search-evals 40 --recipe standard --seed 0 \
        --device cpu --no-export; done
    python bench/dense_vs_pruned.py --collect bench/results/dvp-standard

The table is written to ``<run>/dense_vs_pruned.md`` (and ``.json``) as well. For the dense
model "before" is the run's base top-1, and distillation is from a frozen copy of itself
(self-distillation: the loss the pruned model trained with, with the same teacher).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
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


def _dense_key(config: RunConfig) -> str:
    """What the dense fine-tune depends on: the model and weights, the data and its split, the seed and the
    fine-tuning settings (not the budget or the strategy)."""
    key = {"model": config.model, "weights": config.weights, "data": config.data, "protocol": config.protocol,
           "val_size": config.val_size, "image_size": config.image_size, "seed": config.seed,
           "finetune": config.finetune.to_dict()}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def compare(run_path: Path, *, device: str | None = None, dense_cache: str | Path | None = None) -> dict:
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
    cache = None if found.get("model") or not dense_cache else Path(dense_cache) / f"dense-{_dense_key(config)}.pt"
    if cache is not None and cache.exists():          # the same unpruned model, fine-tuned the same way before
        saved = torch.load(cache, map_location=session.device, weights_only=True)
        dense.load_state_dict(saved["state_dict"])
        history, dense_seconds = saved["history"], saved["seconds"]
    else:
        t0 = time.perf_counter()
        history = finetune(dense, data, config.finetune, teacher=teacher, device=session.device)
        dense_seconds = time.perf_counter() - t0
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"state_dict": dense.state_dict(), "history": history, "seconds": dense_seconds}, cache)
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


def _mean_std(values: list[float], sign: str = "") -> str:
    if len(values) == 1:
        return f"{values[0]:{sign}.2f}"
    t = torch.tensor(values, dtype=torch.float64)
    return f"{float(t.mean()):{sign}.2f} ± {float(t.std()):.2f}"


def per_seed_table(found: list[dict]) -> list[str]:
    """Per model, budget and seed: the dense model's report top-1 after fine-tuning, each strategy's gap to
    it, and which strategy came out best (a claim about every seed reads this table, not the means)."""
    strategies = sorted({r["strategy"] for r in found})
    cells: dict[tuple, dict[str, dict]] = {}
    for r in found:
        cells.setdefault((r["model"], r["budget"], r["seed"]), {})[r["strategy"]] = r
    lines = ["Per seed: each strategy's gap to the dense model fine-tuned the same way (same seed).", "",
             "| model | budget | seed | dense top-1 | " + " | ".join(f"{s} gap" for s in strategies) + " | best |",
             "|---|---|---|---|" + "---|" * len(strategies) + "---|"]
    for (model, budget, seed), by in sorted(cells.items()):
        dense = next(iter(by.values()))["rows"][0]["top1_after_ft"]
        gaps = {s: r["rows"][1]["top1_after_ft"] - r["rows"][0]["top1_after_ft"] for s, r in by.items()}
        best = max(gaps, key=gaps.get)
        lines.append(f"| {model} | {budget} | {seed} | {dense:.2f} | "
                     + " | ".join(f"{gaps[s]:+.2f}" if s in gaps else "–" for s in strategies)
                     + f" | {best} ({gaps[best]:+.2f}) |")
    return lines


def collect(folder: Path, command: str) -> str:
    """The evidence table: per model, budget and strategy, the pruned and dense report top-1 after the same
    fine-tuning and the gap (mean ± std over the seeds found), from every comparison under ``folder``."""
    found = [json.loads(f.read_text()) for f in sorted(folder.glob("*/dense_vs_pruned.json"))]
    if not found:
        raise SystemExit(f"error: no */dense_vs_pruned.json under {folder}; run the comparisons first")
    groups: dict[tuple, list[dict]] = {}
    for r in found:
        groups.setdefault((r["model"], r["budget"], r["strategy"]), []).append(r)
    ft = found[0]["finetune"]
    lines = [f"`{command}`", "",
             f"Protocol {found[0]['protocol']} (report top-1 on {found[0]['report_images']} report images), "
             f"{found[0]['data']}; pruned and dense models fine-tuned alike: {ft['epochs']} epochs, "
             f"{'all fine-tune images' if not ft.get('max_batches_per_epoch') else str(ft['max_batches_per_epoch']) + ' batches'}"
             f" per epoch, batch {ft['batch_size']}, lr {ft['lr']}, warm-up {ft.get('warmup', 0)}, distillation weight "
             f"{ft['kd_weight']} (T={ft['kd_temperature']}); {found[0]['machine']}.", "",
             "| model | budget | strategy | seeds | MACs (M) | pruned top-1 | dense top-1 (same training) | gap |",
             "|---|---|---|---|---|---|---|---|"]
    records = []
    for (model, budget, strategy), rs in sorted(groups.items()):
        rs.sort(key=lambda r: r["seed"])
        pruned = [r["rows"][1]["top1_after_ft"] for r in rs]
        dense = [r["rows"][0]["top1_after_ft"] for r in rs]
        gaps = [a - b for a, b in zip(pruned, dense)]
        seeds = ",".join(str(r["seed"]) for r in rs)
        lines.append(f"| {model} | {budget} | {strategy} | {seeds} | {rs[0]['rows'][1]['macs_M']} | "
                     f"{_mean_std(pruned)} | {_mean_std(dense)} | {_mean_std(gaps, '+')} |")
        records += [{k: r[k] for k in ("model", "budget", "strategy", "seed", "run", "rows", "finetune")} for r in rs]
    lines += ["", *per_seed_table(found)]
    text = "\n".join(lines) + "\n"
    (folder / "evidence.md").write_text(text)
    (folder / "evidence.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return text


def _finished(run_path: Path) -> bool:
    summary = RunDir(run_path).summary() if (run_path / "summary.json").exists() else None
    return bool(summary) and summary.get("status") == Status.DONE


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "python bench/dense_vs_pruned.py " + " ".join(shlex.quote(a) for a in argv)
    prune_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, prune_args = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="run directory (created by the prune arguments after --, if given)")
    p.add_argument("--collect", metavar="DIR",
                   help="instead: the evidence table of every */dense_vs_pruned.json under DIR (DIR/evidence.md)")
    p.add_argument("--device", default=None, help="override the run's device (auto, cpu, cuda)")
    p.add_argument("--dense-cache", default=None,
                   help="folder keeping the dense fine-tune: runs that differ only in budget or strategy share it")
    args = p.parse_args(argv)
    if bool(args.run) == bool(args.collect):
        print("error: give --run RUN (one comparison) or --collect DIR (the table of many)", file=sys.stderr)
        return 2
    if args.collect:
        text = collect(Path(args.collect), command)
        print(text)
        return 0
    run_path = Path(args.run)
    try:
        if prune_args and not _finished(run_path):
            from pruner.cli import main as cli_main

            resume = (run_path / "config.json").exists()   # an interrupted run goes on where it stopped
            rc = cli_main(["prune", "--resume", "--out", str(run_path)] if resume else
                          ["prune", *prune_args, "--out", str(run_path)])
            if rc != 0:
                return rc
        result = compare(run_path, device=args.device, dense_cache=args.dense_cache)
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
