"""Which search score predicts the model a user keeps? Spearman of each score with report-half top-1.

A search ranks candidates by a score on the *search* split right after BN recalibration; the user
keeps the candidate *after fine-tuning*, scored on the *report* split the search never sees. This
bench takes the structures one search scored (a real ``python -m pruner prune`` run, no
fine-tuning), gives every one the same short fine-tune (distillation from the unpruned model,
same seed and batches), and reports the Spearman rank correlation of each search score with the
report-half top-1 after it (and before it):

* ``top1``: search-split top-1 (%), what the search maximised so far;
* ``kl``: the mean KL divergence of the candidate's softmax from the unpruned model's on the same
  images (``--score kl``: fidelity ``100 * exp(-KL)``), from the same forward pass;
* ``kl_recal``: the same divergence from the unpruned model after the same BN recalibration the
  candidates get (the recalibration shift removed from the reference).

    python bench/score_fidelity.py --out bench/results/score_fidelity_r20 --model resnet20 \\
        --budget flops=0.5 --search-evals 60 --structures 24 --ft-batches 100

Resumable: each structure's figures are one line of ``<out>/structures.jsonl``; the table is
``<out>/score_fidelity.md`` (and ``.json``). The interval is the 5-95 % range over 2,000
bootstrap resamples of the structures.
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from pruner.budget import Budget  # noqa: E402
from pruner.errors import PrunerError  # noqa: E402
from pruner.evaluate import accuracy  # noqa: E402
from pruner.finetune import FinetuneConfig, finetune  # noqa: E402
from pruner.runs.config import RunConfig  # noqa: E402
from pruner.runs.job import Session, run_job  # noqa: E402
from pruner.runs.rundir import Event, RunDir  # noqa: E402

SCORE_NAMES = ("top1", "kl", "kl_recal")


def pick(events: list[dict], budget: Budget, n: int) -> list[dict]:
    """Up to ``n`` distinct structures meeting ``budget``, spread evenly over their search top-1 ranks."""
    seen, feasible = set(), []
    for e in events:
        key = tuple(e["counts"])
        if key not in seen and budget.feasible(e.get("cost")):
            seen.add(key)
            feasible.append(e)
    feasible.sort(key=lambda e: e["top1"])
    if len(feasible) <= n:
        return feasible
    idx = np.unique(np.linspace(0, len(feasible) - 1, n).round().astype(int))
    return [feasible[i] for i in idx]


def spearman_ci(x, y, rng, resamples: int = 2000) -> tuple[float, float, float]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    rho = float(spearmanr(x, y).statistic)
    boots = []
    for _ in range(resamples):
        i = rng.integers(0, len(x), len(x))
        if len(set(x[i])) > 1 and len(set(y[i])) > 1:
            boots.append(spearmanr(x[i], y[i]).statistic)
    lo, hi = np.percentile(boots, [5, 95]) if boots else (float("nan"), float("nan"))
    return rho, float(lo), float(hi)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "python bench/score_fidelity.py " + " ".join(shlex.quote(a) for a in argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data", default="cifar10-jpeg")
    p.add_argument("--budget", default="flops=0.5")
    p.add_argument("--strategy", default="rl")
    p.add_argument("--search-evals", type=int, default=60)
    p.add_argument("--structures", type=int, default=24)
    p.add_argument("--ft-batches", type=int, default=100, help="fine-tuning batches of 128 per structure")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table-only", action="store_true", help="no new structures: the table from those measured so far")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        config = RunConfig(model=args.model, weights="pretrained", data=args.data, protocol="test-halves",
                           budget=args.budget, strategy=args.strategy, search_evals=args.search_evals,
                           finetune={"epochs": 0}, export=False, report_images=500, seed=args.seed)
        search = out / "search"
        if not (search / "summary.json").exists():
            run_job(config, search)
        events = RunDir(search).events(Event.CANDIDATE)
        chosen = pick(events, config.budget_obj, args.structures)
        if len(chosen) < 3:
            raise PrunerError(f"the search scored only {len(chosen)} distinct structures within the budget; "
                              "raise --search-evals")
        session = Session(RunConfig.from_dict({**config.to_dict(), "report_images": None}))
        ev = session.evaluator(max_evals=None)
        full = [g.channels for g in session.space.groups]
        base_recal = F.log_softmax(ev.logits(ev.scored_model(full)), 1)
        teacher = copy.deepcopy(session.model).eval()
        ft = FinetuneConfig(epochs=1, max_batches_per_epoch=args.ft_batches, seed=args.seed)
        data = session.data
        lines = out / "structures.jsonl"
        done = {tuple(json.loads(l)["counts"]) for l in lines.read_text().splitlines()} if lines.exists() else set()
        for k, e in enumerate(chosen):
            if tuple(e["counts"]) in done or args.table_only:
                continue
            t0 = time.perf_counter()
            logits = ev.logits(ev.scored_model(e["counts"]))
            top1, kl = ev.score(ev.scored_model(e["counts"]))
            logp = F.log_softmax(logits, 1)
            kl_recal = float((base_recal.exp() * (base_recal - logp)).sum(1).mean())
            pruned, _ = session.build_pruned(e["counts"])
            before = accuracy(pruned, data.report, mean=data.mean, std=data.std, device=session.device)["top1"]
            finetune(pruned, data, ft, teacher=teacher, device=session.device)
            after = accuracy(pruned, data.report, mean=data.mean, std=data.std, device=session.device)["top1"]
            row = {"candidate_id": e["candidate_id"], "counts": e["counts"], "cost": e["cost"], "top1": top1, "kl": kl,
                   "kl_recal": kl_recal, "report_before": before, "report_after": after,
                   "seconds": round(time.perf_counter() - t0, 1)}
            with lines.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"[{k + 1}/{len(chosen)}] candidate {e['candidate_id']}: search top-1 {top1:.1f}, KL {kl:.3f}, "
                  f"KL(recal) {kl_recal:.3f}; report {before:.2f} -> {after:.2f} ({row['seconds']} s)", flush=True)
    except PrunerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = [json.loads(l) for l in lines.read_text().splitlines()]
    rng = np.random.default_rng(0)
    sign = {"top1": 1.0, "kl": -1.0, "kl_recal": -1.0}   # higher is better for every score as ranked
    table = {}
    for name in SCORE_NAMES:
        x = [sign[name] * r[name] for r in rows]
        table[name] = {"after": spearman_ci(x, [r["report_after"] for r in rows], rng),
                       "before": spearman_ci(x, [r["report_before"] for r in rows], rng)}
    machine = (torch.cuda.get_device_name(session.device) if session.device.type == "cuda"
               else f"CPU ({torch.get_num_threads()} threads)")
    after = [r["report_after"] for r in rows]
    md = [f"`{command}`", "",
          f"{args.model} on {args.data}, protocol test-halves ({len(ev.search_set)} search images, {len(data.report)} "
          f"report images), budget {args.budget}: {len(rows)} distinct structures within the budget from one "
          f"`{args.strategy}` search of {args.search_evals} evaluations (seed {args.seed}), spread over its search "
          f"top-1 ranks; each fine-tuned {args.ft_batches} batches of {ft.batch_size} (lr {ft.lr}, cosine, KD "
          f"{ft.kd_weight} at T={ft.kd_temperature} from the unpruned model, seed {args.seed}); report top-1 after "
          f"fine-tuning {min(after):.2f}-{max(after):.2f}; {machine}. Spearman rho (5-95 % bootstrap interval).", "",
          "| search score | vs report top-1 after fine-tuning | vs report top-1 before |", "|---|---|---|"]
    for name in SCORE_NAMES:
        a, b = table[name]["after"], table[name]["before"]
        md.append(f"| {name} | {a[0]:.3f} ({a[1]:.2f} to {a[2]:.2f}) | {b[0]:.3f} ({b[1]:.2f} to {b[2]:.2f}) |")
    text = "\n".join(md) + "\n"
    (out / "score_fidelity.md").write_text(text)
    (out / "score_fidelity.json").write_text(json.dumps({"command": command, "rows": rows, "spearman": table},
                                                        indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
