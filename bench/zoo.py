"""Every torchvision classification model through the pruner: build, prune, export, verify.

For each name in ``torchvision.models.list_models(module=torchvision.models)``, with random
weights (``--weights none``) at the smallest input of ``--sizes`` the model accepts:

1. the pruning space (Torch-Pruning's dependency graph; groups that reach an op it cannot
   follow are frozen, :mod:`pruner.pruning.opaque`);
2. ``uniform`` allocation (every group the same keep ratio, what ``--strategy uniform`` does) solved
   onto ``flops=0.5``, or onto the model's floor when the floor is above 0.5 (said in the row);
3. the physical surgery, the MACs ratio measured by ``torch.utils.flop_counter`` on the pruned model;
4. ONNX export verified in ONNX Runtime (``pruner.export.export_onnx``: max |ort - torch| <= 1e-4
   x the output scale max(1, max |logit|); the table gives that relative difference: random-init
   Inception-v3's logits reach 2e6, where float32 alone differs by units).

Each model runs in its own child process under a time limit (a model that hangs or runs out
of memory is a row, not the end of the sweep). Rows are appended to ``--out`` (JSON lines) as they
finish, and a rerun skips the models already there (resumable).

    python bench/zoo.py                       # the whole list, results in bench/results/zoo.jsonl
    python bench/zoo.py --only shufflenet_v2_x0_5,resnet18 --out /tmp/z.jsonl
    python bench/zoo.py --table               # print the table of what is there
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: the input sizes tried in turn (the smallest the model accepts is used)
SIZES = (64, 96, 128, 224)
TRANSFORMERS = ("vit_", "swin_", "maxvit_")


def one(name: str, sizes: tuple[int, ...], target: float) -> dict:
    """The whole pipeline for one model, in this process: a row."""
    import tempfile

    import torch
    import torchvision

    from pruner.budget import Budget, cost_floor, solve
    from pruner.errors import PrunerError
    from pruner.export import export_onnx
    from pruner.measure import count_cost
    from pruner.pruning.importance import channel_scores, ranking_from_scores
    from pruner.pruning.space import PruningSpace

    torch.manual_seed(0)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    row: dict = {"model": name, "kind": "transformer" if name.startswith(TRANSFORMERS) else "cnn"}
    model = torchvision.models.get_model(name, weights=None).eval()
    if hasattr(model, "aux_logits"):   # GoogLeNet/Inception: the eval-mode graph has one output
        model.aux_logits = False
        for attr in ("aux1", "aux2", "AuxLogits"):
            if hasattr(model, attr):
                setattr(model, attr, None)
    size = None
    for s in sizes:
        try:
            with torch.no_grad():
                model(torch.randn(1, 3, s, s))
            size = s
            break
        except Exception as exc:  # noqa: BLE001 - try the next size
            row["size_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    if size is None:
        return {**row, "result": "refused", "reason": f"no input size of {sizes} runs: {row['size_error']}"}
    row["size"] = size
    try:
        space = PruningSpace(model, (3, size, size))
    except PrunerError as exc:
        return {**row, "result": "refused", "reason": str(exc), "seconds": time.perf_counter() - t0}
    frozen = space.frozen_report()
    row.update(groups=len(space.groups), frozen_groups=len(frozen["groups"]), frozen_channels=frozen["channels"],
               prunable_macs_share=round(frozen["prunable_macs_share"], 4),
               frozen_example=frozen["groups"][0]["reason"] if frozen["groups"] else None)
    space.set_ranking(ranking_from_scores(channel_scores(model, space)))
    floor = cost_floor(space, "flops")
    goal = target if floor is None or floor <= target else min(1.0, round(floor + 0.005, 3))
    row.update(floor=round(floor, 4) if floor is not None else None, target=goal)
    try:
        sol = solve(space, [1.0] * len(space.groups), Budget("flops", goal))
        pruned, _ = space.prune(model, sol.counts)
    except PrunerError as exc:
        return {**row, "result": "refused", "reason": str(exc), "seconds": time.perf_counter() - t0}
    row["macs_ratio"] = round(count_cost(pruned, (3, size, size)).macs / count_cost(model, (3, size, size)).macs, 4)
    row["predicted_ratio"] = round(sol.achieved, 4)
    with tempfile.TemporaryDirectory() as d:
        try:
            report = export_onnx(pruned, Path(d) / "m.onnx", input_size=(3, size, size), mean=[0.5] * 3,
                                 std=[0.25] * 3, class_names=[str(i) for i in range(1000)],
                                 sample=torch.randn(2, 3, size, size))
            row.update(onnx_max_abs_diff=report.max_abs_diff, onnx_rel_diff=report.max_rel_diff)
        except PrunerError as exc:
            return {**row, "result": "pruned, export failed", "reason": str(exc), "seconds": time.perf_counter() - t0}
    row["result"] = "pruned" if not frozen["groups"] else "pruned (partly frozen)"
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def _child(args) -> int:
    import resource

    # a model whose graph analysis explodes gets a MemoryError (a row with the reason), not the kernel's OOM killer
    limit = int(args.memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    row = one(args.child, tuple(args.sizes), args.target)
    print("ROW " + json.dumps(row), flush=True)
    return 0


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(rows: list[dict]) -> str:
    out = ["| model | input | result | groups (frozen) | prunable MACs | MACs ratio | ONNX max diff / logit scale | s | note |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["model"]):
        note = r.get("reason") or ""
        if r.get("target") and r.get("target") != 0.5:
            note = f"floor {r['floor']:.3f} is above 0.5: pruned to {r['target']}. " + note
        if r.get("predicted_ratio") is not None and abs(r["predicted_ratio"] - r.get("macs_ratio", 0)) > 1e-3:
            note = f"predicted {r['predicted_ratio']}, measured {r['macs_ratio']}. " + note
        if r.get("frozen_example") and not note:
            note = "e.g. " + r["frozen_example"]
        share = r.get("prunable_macs_share")
        share = "" if share is None else f"{100 * share:.0f} %"
        diff = r.get("onnx_rel_diff")
        diff = "" if diff is None else f"{diff:.1e}"
        frozen = f" ({r['frozen_groups']})" if r.get("frozen_groups") else ""
        secs = f"{r['seconds']:.1f}" if isinstance(r.get("seconds"), (int, float)) else ""
        out.append(f"| {r['model']} | {r.get('size', '')} | {r['result']} | {r.get('groups', '')}{frozen} | {share} | "
                   f"{r.get('macs_ratio', '')} | {diff} | {secs} | {note[:160]} |")
    cnn = [r for r in rows if r["kind"] == "cnn"]
    ok = [r for r in cnn if r["result"].startswith("pruned") and "failed" not in r["result"]]
    out.append(f"\n{len(ok)} of {len(cnn)} CNNs pruned and exported "
               f"({sum(1 for r in ok if 'frozen' in r['result'])} partly frozen); transformers: "
               + ", ".join(f"{r['model']} {r['result']}" for r in rows if r["kind"] == "transformer"))
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "zoo.jsonl"))
    p.add_argument("--only", help="comma-separated model names (default: every torchvision classification model)")
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--target", type=float, default=0.5, help="the flops budget (fraction of the MACs kept)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one model may take")
    p.add_argument("--memory-gb", type=float, default=10.0, help="address space one model may use (GiB)")
    p.add_argument("--table", action="store_true", help="print the table of --out and stop")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return _child(args)
    out = Path(args.out)
    if args.table:
        print(table(_rows(out)))
        return 0
    import torchvision

    names = args.only.split(",") if args.only else torchvision.models.list_models(module=torchvision.models)
    done = {r["model"] for r in _rows(out)}
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name in done:
            continue
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, "--child", name, "--target", str(args.target), "--memory-gb",
               str(args.memory_gb), "--sizes", *map(str, args.sizes)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")), None)
            if line:
                row = json.loads(line[4:])
            else:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                row = {"model": name, "kind": "transformer" if name.startswith(TRANSFORMERS) else "cnn",
                       "result": "error", "reason": f"rc {proc.returncode}: {tail[:300]}"}
        except subprocess.TimeoutExpired:
            row = {"model": name, "kind": "transformer" if name.startswith(TRANSFORMERS) else "cnn",
                   "result": "timeout", "reason": f"over {args.timeout:.0f} s"}
        row.setdefault("seconds", round(time.perf_counter() - t0, 1))
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{name}: {row['result']} {row.get('macs_ratio', '')} {row.get('reason', '')[:120]}", flush=True)
    print(table(_rows(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
