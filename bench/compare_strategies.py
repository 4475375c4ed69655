"""Side-by-side quality of the search strategies at equal cost.

Runs the whole pipeline (search -> fine-tune with distillation -> report) once per strategy
with the same model, data, budget, --search-evals and fine-tuning, then prints a markdown
table and writes a CSV. Protocol: test-halves by default (the shared pretrained ResNets were
trained on all 50,000 training images, so a val split carved from train is not unseen data);
the search scores the search half, the table's test top-1 is on the report half.

With ``--seeds 0,1,2`` every strategy runs once per seed (run directories ``OUT/seed<N>/<strategy>``)
and the table gives mean ± std over the seeds of the search top-1 and of the report top-1.

``--fast`` skips the job pipeline (ONNX export, latency, checkpoints): one session per seed, a
fresh evaluator per strategy, and the report top-1 measured on the pruned, BN-recalibrated model
after the same fine-tuning (``--finetune-epochs`` x ``--max-batches-per-epoch``, distillation from
the unpruned model; 0 = none). Evaluations are cached per (model, seed) in ``OUT/cache``: an
evaluation of the same structure of the same model on the same images is the same number, so a
structure that another strategy already scored is replayed through ``Evaluator.preload`` and
still counts once against that strategy's ``--search-evals`` (only the compute is shared).

Example (the README's table):
    python bench/compare_strategies.py --model resnet56 --weights pretrained --data cifar10-jpeg \
        --budget flops=0.5 --search-evals 40 --strategies uniform,global,random,sensitivity,rl \
        --seeds 0,1,2 --fast --finetune-epochs 0 --out bench/results/strategies/flops50
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import statistics
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pruner.finetune import FinetuneConfig  # noqa: E402
from pruner.runs.config import RunConfig  # noqa: E402
from pruner.runs.job import resume_job, run_job  # noqa: E402
from pruner.runs.rundir import RunDir, Status, read_sensitivity  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--weights", default="pretrained")
    p.add_argument("--data", default="cifar10-jpeg")
    p.add_argument("--protocol", default="test-halves")
    p.add_argument("--budget", default="flops=0.5")
    p.add_argument("--strategies", default="uniform,global,random,rl")
    p.add_argument("--search-evals", type=int, default=40)
    p.add_argument("--search-images", type=int, default=1000)
    p.add_argument("--recal-images", type=int, default=256)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--max-batches-per-epoch", type=int, default=60)
    p.add_argument("--set", action="append", default=[], metavar="STRATEGY.KEY=VALUE",
                   help="strategy hyperparameter, e.g. rl.steps=5")
    p.add_argument("--budget-for", action="append", default=[], metavar="STRATEGY=BUDGET",
                   help="a different budget for one strategy, e.g. rl=flops=0.6 (repeatable)")
    p.add_argument("--latency-repeats", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", default=None, help="comma-separated seeds (overrides --seed); the table gives mean ± std")
    p.add_argument("--fast", action="store_true", help="in-process: no export/latency; evaluations cached per seed")
    p.add_argument("--collect", nargs="+", default=None, metavar="DIR",
                   help="no runs: merge the results.csv of earlier runs (e.g. one process per seed) into OUT's tables")
    p.add_argument("--out", default="bench/results/compare")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="--fast: where evaluations are cached (default OUT/cache); share it between budgets of one "
                        "seed, since a structure's search top-1 does not depend on the budget")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.collect:
        return collect(args)
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]

    params: dict[str, dict] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        strat, _, name = key.partition(".")
        try:
            params.setdefault(strat, {})[name] = json.loads(value)
        except json.JSONDecodeError:
            params.setdefault(strat, {})[name] = value

    budgets = {}
    for item in args.budget_for:
        strat, _, budget = item.partition("=")
        budgets[strat] = budget
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in seeds:
        if args.fast:
            rows += run_fast(args, params, budgets, seed, out)
            continue
        rows += run_pipeline(args, params, budgets, seed, out / f"seed{seed}" if args.seeds else out)
    if not rows:
        return 1
    write_tables(args, rows, out, seeds)
    return 0


def config_for(args, params, budgets, strategy: str, seed: int) -> RunConfig:
    return RunConfig(model=args.model, weights=None if args.weights == "none" else args.weights, data=args.data,
                     protocol=args.protocol, budget=budgets.get(strategy, args.budget), strategy=strategy,
                     latency_repeats=args.latency_repeats,
                     strategy_params=params.get(strategy, {}), search_evals=args.search_evals,
                     search_images=args.search_images, recal_images=args.recal_images,
                     finetune=FinetuneConfig(epochs=args.finetune_epochs,
                                             max_batches_per_epoch=args.max_batches_per_epoch, seed=seed),
                     seed=seed)


def run_pipeline(args, params, budgets, seed: int, out: Path) -> list[dict]:
    rows = []
    for strategy in args.strategies.split(","):
        cfg = config_for(args, params, budgets, strategy, seed)
        run_dir = out / strategy
        t0 = time.time()
        summary = resume_job(run_dir) if RunDir(run_dir).config_path.exists() else run_job(cfg, run_dir)
        if summary["status"] != Status.DONE:
            print(f"{strategy}: {summary['status']}: {summary['error']}", file=sys.stderr)
            continue
        s, b, r = summary["search"], summary["base"], summary["pruned"]
        rows.append({
            "strategy": strategy, "budget": cfg.budget, "evaluations": s["evaluations"], "val_top1_before_ft": round(s["best_val_top1"], 2),
            "test_top1_after_ft": round(r["top1"], 2), "base_test_top1": round(b["top1"], 2),
            "macs_M": round(r["macs"] / 1e6, 2), "macs_frac": round(r["macs"] / b["macs"], 3),
            "params_M": round(r["params"] / 1e6, 3), "cpu_ms_b1": round(r["latency_ms"], 2),
            # paired (interleaved with the unpruned model) when the run has it: robust to drifting CPU speed
            "latency_frac": round(r.get("latency_vs_base") or r["latency_ms"] / b["latency_ms"], 3),
            "ort_ms_b1": round(r["ort_latency_ms"], 2) if r.get("ort_latency_ms") else None,
            "search_s": round(s["seconds"]), "total_s": round(time.time() - t0), "seed": seed,
            "answer_is_start": s.get("answer_is_start"),
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def run_fast(args, params, budgets, seed: int, out: Path) -> list[dict]:
    """One session per seed, a fresh evaluator per strategy, shared (cached) evaluations."""
    import copy

    from pruner.evaluate import accuracy
    from pruner.finetune import finetune
    from pruner.pruning.sparsity import make_permanent, measure_sparsity
    from pruner.runs.job import Session
    from pruner.search import SearchContext, make_strategy, run_search

    first = config_for(args, params, budgets, args.strategies.split(",")[0], seed)
    session = Session(first)
    data = session.data
    cache_dir = Path(args.cache) if args.cache else out / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache = cache_dir / f"{args.model}-{args.weights}-{args.data}-{args.protocol}-seed{seed}-s{args.search_images}-r{args.recal_images}.jsonl"
    known: dict[tuple, dict] = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            e = json.loads(line)
            known[tuple(e["counts"])] = e
    base_report = accuracy(session.model, data.report, mean=data.mean, std=data.std, device=session.device)["top1"]
    rows = []
    for strategy in args.strategies.split(","):
        cfg = config_for(args, params, budgets, strategy, seed)
        session.config = cfg
        def remember(c) -> None:  # every fresh evaluation goes to the cache at once: a killed run loses nothing
            if tuple(c.counts) not in known and c.meta.get("model_version", 0) == 0:
                known[tuple(c.counts)] = {"counts": c.counts, "top1": c.top1, "macs": c.macs, "params": c.params,
                                          "latency_ms": c.latency_ms, "cost": c.cost, "meta": {"model_version": 0}}
                with open(cache, "a") as fh:
                    fh.write(json.dumps(known[tuple(c.counts)]) + "\n")
            print(f"  {strategy} seed {seed}: candidate {c.id} top-1 {c.top1:.1f} cost {c.cost:.3f} "
                  f"{c.meta.get('proposal') or c.meta.get('probe', '')}", file=sys.stderr, flush=True)

        ev = session.evaluator(max_evals=cfg.search_evals, on_candidate=remember)
        ev.preload(list(known.values()))
        ev._logged = 0  # report every candidate to remember(), replayed ones included (it skips the known)
        notes: list[dict] = []  # the strategy's prior and log events, kept with its candidates
        ctx = SearchContext(ev, seed=seed, scores=session.scores, importance=cfg.importance,
                            read_analysis=read_sensitivity,
                            emit=lambda kind, **f: notes.append({"kind": kind, **f}) if kind in ("prior", "log") else None)
        strat = make_strategy(strategy, **cfg.strategy_params)
        t0 = time.time()
        best = run_search(strat, ctx)
        seconds = time.time() - t0
        with open(out / f"candidates-{strategy}-seed{seed}.jsonl", "w") as fh:  # what the search did, for the record
            for e in notes:
                fh.write(json.dumps(e) + "\n")
            for c in ev.candidates:
                fh.write(json.dumps({"kind": "candidate", "id": c.id, "top1": c.top1, "cost": round(c.cost, 4),
                                     "keep_ratios": [round(k, 3) for k in c.keep_ratios], "meta": c.meta}) + "\n")
        model = ev.model if ev.model_version > 0 else session.model
        # the job's own construction: physical pruning, or masks that stay through fine-tuning (sparsity)
        pruned, _ = session.build_pruned(best.counts, model=model, ranking=ev.ranking)
        if args.finetune_epochs > 0:
            finetune(pruned, data, cfg.finetune, teacher=copy.deepcopy(model).eval(), device=session.device)
        report = accuracy(pruned, data.report, mean=data.mean, std=data.std, device=session.device)["top1"]
        zeros = (measure_sparsity(make_permanent(pruned), session.space, cfg.budget_obj)["sparsity"]
                 if session.sparse else None)
        rows.append({
            "strategy": strategy, "budget": cfg.budget, "evaluations": ev.evaluations,
            "val_top1_before_ft": round(best.top1, 2), "test_top1_after_ft": round(report, 2),
            "base_test_top1": round(base_report, 2), "macs_M": round(best.macs / 1e6, 2),
            "macs_frac": round(best.macs / session.space.base_macs, 3), "params_M": round(best.params / 1e6, 3),
            "search_s": round(seconds), "seed": seed, "answer_is_start": bool(best.meta.get("is_start")),
        })
        if zeros is not None:  # measured on the fine-tuned weights
            rows[-1]["sparsity_after_ft"] = round(zeros, 4)
        print(json.dumps(rows[-1]), flush=True)
    return rows


def collect(args) -> int:
    rows = []
    for d in args.collect:
        with open(Path(d) / "results.csv") as fh:
            for r in csv.DictReader(fh):
                for k in ("evaluations", "val_top1_before_ft", "test_top1_after_ft", "macs_frac", "seed"):
                    r[k] = float(r[k]) if k != "seed" else int(r[k])
                r["answer_is_start"] = r.get("answer_is_start") == "True"
                rows.append(r)
    if not rows:
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows.sort(key=lambda r: (r["seed"], r["strategy"]))
    write_tables(args, rows, out, sorted({r["seed"] for r in rows}))
    return 0


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def write_tables(args, rows: list[dict], out: Path, seeds: list[int]) -> None:
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    tuning = (f"fine-tune {args.finetune_epochs} epoch(s) x {args.max_batches_per_epoch} batches with distillation"
              if args.finetune_epochs else "no fine-tuning (test_top1_after_ft is the pruned, BN-recalibrated model)")
    if args.threads:
        threads = f"{args.threads} intra-op thread(s)"
    elif args.collect:  # the collecting process's own count says nothing about the runs'
        threads = "the runs' intra-op threads (pass the runs' --threads to --collect to record them)"
    else:
        threads = f"{torch.get_num_threads()} intra-op thread(s)"
    machine = f"CPU, {threads}" + (", GPU" if torch.cuda.is_available() else "")
    lines = [f"`{command}`", "",
             f"Protocol: {args.protocol} (search on the search half, test top-1 on the report half); "
             f"budget {args.budget} (unless the row says otherwise); {args.search_evals} evaluations; {tuning}; "
             f"seeds {', '.join(map(str, seeds))}; {machine}."
             + ("" if args.fast else " Latency: PyTorch and ONNX Runtime, batch 1; *_frac columns are relative to "
                "the unpruned model (latency_frac timed in interleaved pairs with it)."), "",
             "| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(str(row.get(k, "")) for k in fields) + " |" for row in rows]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["strategy"], []).append(r)
    lines += ["", f"Mean ± std over seeds {', '.join(map(str, seeds))}:", "",
              "| strategy | seeds | evaluations | search top-1 | report top-1 | MACs (frac) | answer is the start |",
              "|---|---|---|---|---|---|---|"]
    for strategy, rs in by.items():
        lines.append(f"| {strategy} | {len(rs)} | {_mean_std([r['evaluations'] for r in rs])} | "
                     f"{_mean_std([r['val_top1_before_ft'] for r in rs])} | {_mean_std([r['test_top1_after_ft'] for r in rs])} | "
                     f"{_mean_std([r['macs_frac'] for r in rs])} | "
                     f"{sum(bool(r.get('answer_is_start')) for r in rs)}/{len(rs)} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
