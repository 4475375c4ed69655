"""Joint training and pruning from scratch against train-then-prune and dense training, at equal epochs.

Every arm trains for ``--epochs`` (E) epochs over all fine-tune images in total, with the same
augmentation, optimiser (SGD, Nesterov 0.9, weight decay 5e-4, batch 128) and cosine schedule:

* ``dense``: the model re-initialised (seeded) and trained from scratch for E epochs (lr ``--lr``);
* ``joint``: ``python -m pruner prune --strategy joint --set init=scratch`` training from scratch for
  E - F epochs while its agent chooses the structure (lr ``--lr``), then the job's F epochs of fine-tuning
  (distilled from the trained unpruned model, lr ``--finetune-lr``);
* ``train-then-prune``: dense from scratch for E - F epochs, then ``python -m pruner prune --strategy rl``
  on those weights at the same budget and evaluations, and the same F epochs of fine-tuning.

Every figure is report-split top-1 (the split no search scores on) with its gap to ``dense``, and the
wall-clock of each arm on this machine. Each arm is kept in ``--out`` and skipped when its result exists;
the pruning runs are ordinary run directories, resumed by ``--resume`` when interrupted::

    python bench/joint_vs_prune.py --model resnet20 --budget flops=0.5 --epochs 15 --finetune-epochs 3 \\
        --search-evals 74 --out bench/results/joint-vs-prune-r20
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pruner.errors import PrunerError  # noqa: E402
from pruner.evaluate import accuracy  # noqa: E402
from pruner.finetune import FinetuneConfig, finetune  # noqa: E402
from pruner.runs.config import RunConfig  # noqa: E402
from pruner.runs.rundir import RunDir, Status  # noqa: E402
from pruner.runs.session import Session  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({torch.get_num_threads()} threads)"


def _common(args) -> list[str]:
    return ["--model", args.model, "--data", args.data, "--protocol", "test-halves", "--budget", args.budget,
            "--seed", str(args.seed), "--search-evals", str(args.search_evals), "--device", args.device,
            "--no-export"]


def train_dense(args, epochs: int, out: Path) -> dict:
    """The model re-initialised (seeded) and trained from scratch for ``epochs`` epochs; its weights are
    saved next to the result (the train-then-prune arm prunes them)."""
    config = RunConfig(model=args.model, weights=None, data=args.data, protocol="test-halves", budget=args.budget,
                       seed=args.seed, device=args.device)
    session = Session(config)
    model = session.model
    torch.manual_seed(args.seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()
    ft = FinetuneConfig(epochs=epochs, lr=args.lr, kd_weight=0.0, warmup=0.0, batch_size=128, seed=args.seed)
    t0 = time.perf_counter()
    history = finetune(model, session.data, ft, device=session.device,
                       on_epoch=lambda r: print(f"  dense {r['epoch']}/{epochs}: loss {r['loss']:.3f} "
                                                f"({r['seconds']:.0f} s)", flush=True))
    seconds = time.perf_counter() - t0
    top1 = accuracy(model, session.data.report, mean=session.data.mean, std=session.data.std,
                    device=session.device)["top1"]
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "weights.pt")
    return {"top1": top1, "seconds": seconds, "epochs": epochs, "final_loss": history[-1]["loss"],
            "report_images": len(session.data.report),
            "macs_ratio": 1.0, "weights": str(out / "weights.pt")}


def prune_run(args, out: Path, extra: list[str]) -> dict:
    """A ``python -m pruner prune`` run (resumed when an earlier one was interrupted); its summary's figures."""
    run = RunDir(out)
    summary = run.summary() if (out / "summary.json").exists() else None
    if not summary or summary.get("status") != Status.DONE:
        cmd = [sys.executable, "-m", "pruner", "prune", *(["--resume"] if (out / "config.json").exists() else
                                                          [*_common(args), *extra]), "--out", str(out), "--quiet"]
        print("  $", " ".join(shlex.quote(c) for c in cmd), flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=ROOT)
        if rc != 0:
            raise PrunerError(f"the run in {out} failed (exit {rc}); see {out / 'log.txt'}, then rerun to resume it")
        (out / "bench_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
        summary = run.summary()
    seconds = float((out / "bench_seconds.txt").read_text()) if (out / "bench_seconds.txt").exists() else None
    return {"top1": summary["pruned"]["top1"], "seconds": seconds, "macs_ratio": summary["budget"]["achieved"],
            "search_top1": (summary.get("search") or {}).get("best_val_top1"),
            "run_seconds": summary.get("seconds"), "run": str(out)}


def arms(args) -> list[tuple[str, callable]]:
    E, F = args.epochs, args.finetune_epochs
    ft = ["--finetune-epochs", str(F), "--lr", str(args.finetune_lr), "--warmup", "0"]
    out = Path(args.out)
    todo = [("dense", lambda: train_dense(args, E, out / "dense"))]
    todo.append(("joint", lambda: prune_run(args, out / "joint", [
        "--weights", "none", "--strategy", "joint", "--set", "init=scratch", "--set", f"epochs={E - F}",
        "--set", "batches_per_epoch=0", "--set", "batch_size=128", "--set", f"lr={args.lr}", *ft])))

    def ttp():
        first = load_or(out / "results" / "dense-before-prune.json", lambda: train_dense(args, E - F, out / "dense-before-prune"))
        res = prune_run(args, out / "train-then-prune", ["--weights", first["weights"], "--strategy", "rl", *ft])
        res["seconds"] = (res["seconds"] or 0.0) + first["seconds"]
        return res
    todo.append(("train-then-prune", ttp))
    return todo


def load_or(path: Path, make) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    result = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return result


def keep_records(out: Path, results: dict) -> None:
    """Each pruning arm's summary and, for joint, its per-epoch events next to the table (the run directories
    themselves are not committed)."""
    for name, r in results.items():
        run = Path(r["run"]) if r.get("run") else None
        if run is None or not (run / "summary.json").exists():
            continue
        (out / f"{name}.summary.json").write_text((run / "summary.json").read_text())
        epochs = RunDir(run).events("joint")
        if epochs:
            (out / f"{name}.joint_events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))


def markdown(args, results: dict, command: str) -> str:
    E, F = args.epochs, args.finetune_epochs
    lines = [f"`{command}`", "",
             f"{args.model} on {args.data}, protocol test-halves (report top-1 on the "
             f"{results.get('dense', {}).get('report_images', '?')} report images no search scores on), budget {args.budget}, seed {args.seed}, one seed; {E} training epochs in every arm "
             f"(from scratch: lr {args.lr}; the pruned arms {E - F} + {F} epochs of fine-tuning at lr "
             f"{args.finetune_lr} with distillation); {args.search_evals} search evaluations; {_machine()}.", "",
             "| arm | MACs ratio | report top-1 | gap to dense | wall-clock |", "|---|---|---|---|---|"]
    dense = results.get("dense", {}).get("top1")
    for name, r in results.items():
        gap = f"{r['top1'] - dense:+.2f}" if dense is not None else "?"
        secs = f"{r['seconds'] / 60:.1f} min" if r.get("seconds") else "?"
        lines.append(f"| {name} | {r['macs_ratio']:.3f} | {r['top1']:.2f} | {gap} | {secs} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "python bench/joint_vs_prune.py " + " ".join(shlex.quote(a) for a in argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data", default="cifar10-jpeg")
    p.add_argument("--budget", default="flops=0.5")
    p.add_argument("--epochs", type=int, default=15, help="total training epochs of every arm (E)")
    p.add_argument("--finetune-epochs", type=int, default=3, help="fine-tuning epochs after pruning (F < E)")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate of training from scratch")
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--search-evals", type=int, default=74)
    p.add_argument("--only", default="", help="comma-separated arms to run now (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if not 0 < args.finetune_epochs < args.epochs:
        print("error: --finetune-epochs must be at least 1 and below --epochs", file=sys.stderr)
        return 2
    out = Path(args.out)
    results = {}
    try:
        for name, make in arms(args):
            done = out / "results" / f"{name}.json"
            if args.only and name not in args.only.split(",") and not done.exists():
                continue
            print(f"[{name}]", flush=True)
            results[name] = load_or(done, make)
    except PrunerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    keep_records(out, results)
    text = markdown(args, results, command)
    (out / "joint_vs_prune.md").write_text(text)
    (out / "joint_vs_prune.json").write_text(json.dumps({"command": command, "machine": _machine(),
                                                         "results": results}, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
