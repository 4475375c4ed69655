"""``python -m pruner``: a thin command-line shell over the engine.

Every command prints ``error: <what went wrong and what to do>`` and exits with status 2
on bad input; set ``PRUNER_DEBUG=1`` to see tracebacks of internal errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import PrunerError

TRUST_HELP = ("accept a whole pickled model in --weights (unpickling runs arbitrary code from the file: "
              "only for files you trust)")


def _model_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default="resnet20",
                   help="zoo name (resnet20/32/44/56/110, vgg16, vgg19, mobilenetv2, googlenet), "
                        "torchvision:NAME, or file:path/net.py:factory")
    g.add_argument("--weights", default="pretrained",
                   help="'pretrained', a state-dict file, or 'none' for random initialisation")
    g.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    g.add_argument("--data", default="digits",
                   help="cifar10, cifar100, cifar10-jpeg, digits, or an ImageFolder path (train/ + test/ or val/)")
    g.add_argument("--data-root", default=None, help="datasets root (default: $PRUNER_DATA_ROOT)")
    g.add_argument("--protocol", default="val-from-train", choices=["val-from-train", "test-halves"],
                   help="search split: a val split carved from train, or half of test (the other half reports)")
    g.add_argument("--val-size", type=int, default=None,
                   help="val images carved from train for val-from-train (default: 10%% of train, at most 5000)")
    g.add_argument("--image-size", type=int, default=None, help="resize ImageFolder images to this size")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda")
    g.add_argument("--seed", type=int, default=0)


def _search_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("search")
    g.add_argument("--budget", default="flops=0.5", help="flops=F, params=F or latency=F: fraction that remains")
    g.add_argument("--strategy", default="rl", help="rl, constrained, purl, joint, or the baselines uniform, global, "
                   "random (see `python -m pruner strategies`)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="strategy hyperparameter, e.g. --set steps=8 --set noise=0.5 (repeatable)")
    g.add_argument("--importance", default="l1", choices=["l1", "l2", "taylor", "random"])
    g.add_argument("--search-evals", type=int, default=100, help="cap on candidate evaluations")
    g.add_argument("--search-images", type=int, default=1000, help="search-split images scored per candidate")
    g.add_argument("--recal-images", type=int, default=256, help="training images for BN recalibration")
    g.add_argument("--max-prune", type=float, default=0.9, help="largest fraction of any group that may go")


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise PrunerError(f"--set {item!r} must be KEY=VALUE")
        k, _, v = item.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _config(args):
    from .finetune import FinetuneConfig
    from .runs.config import RunConfig

    weights = None if str(args.weights).lower() == "none" else args.weights
    kw = dict(model=args.model, weights=weights, trust_checkpoint=args.trust_checkpoint, data=args.data,
              data_root=args.data_root, protocol=args.protocol, val_size=args.val_size, image_size=args.image_size,
              device=args.device, seed=args.seed)
    if hasattr(args, "budget"):
        kw.update(budget=args.budget, strategy=args.strategy, strategy_params=_parse_set(args.set),
                  importance=args.importance, search_evals=args.search_evals, search_images=args.search_images,
                  recal_images=args.recal_images, max_prune=args.max_prune)
    if hasattr(args, "finetune_epochs"):
        kw["finetune"] = FinetuneConfig(epochs=args.finetune_epochs, lr=args.lr, kd_temperature=args.kd_temperature,
                                        kd_weight=args.kd_weight, batch_size=args.batch_size,
                                        max_batches_per_epoch=args.max_batches_per_epoch, seed=args.seed)
        kw["report_images"] = args.report_images
        kw["latency_batch"] = args.latency_batch
        kw["export"] = not args.no_export
    return RunConfig(**kw)


def cmd_info(args) -> int:
    from .runs.job import Session

    s = Session(_config(args))
    print(f"model {args.model}: {s.space.base_macs / 1e6:.2f} M MACs, {s.space.base_params / 1e6:.3f} M params, "
          f"{len(s.space)} prunable groups; data {s.data.name}: {s.data.num_classes} classes, "
          f"fit/search/report = {len(s.data.fit)}/{len(s.data.search)}/{len(s.data.report)} ({s.data.protocol})")
    print(f"{'#':>3} {'group':<28} {'channels':>8} {'layers':>6} {'MACs %':>7} {'params %':>8}")
    for g in s.space.groups:
        print(f"{g.index:>3} {g.name:<28} {g.channels:>8} {len(g.layers):>6} "
              f"{100 * g.macs / s.space.base_macs:>7.1f} {100 * g.params / s.space.base_params:>8.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"groups": [g.to_dict() for g in s.space.groups],
                                               "macs": s.space.base_macs, "params": s.space.base_params}, indent=2))
    return 0


def cmd_prune(args) -> int:
    from .runs.job import run_job
    from .runs.config import RunConfig
    from .runs.rundir import RunDir

    if args.resume:
        cfg = RunConfig.from_dict(RunDir(args.out).config() or {})
    else:
        cfg = _config(args)
    summary = run_job(cfg, args.out, resume=args.resume)
    _print_summary(summary, args.out)
    return 0 if summary["status"] == "done" else (3 if summary["status"] == "cancelled" else 2)


def _latency_entries(r: dict) -> list[dict]:
    """A report's latency figures with device and batch (summaries written before they were recorded
    were timed on the CPU at batch 1)."""
    if r.get("latency"):
        return r["latency"]
    return [{"device": r.get("latency_device", "cpu"), "batch": r.get("latency_batch", 1), "ms": r["latency_ms"],
             "vs_base": r.get("latency_vs_base")}]


def _print_summary(summary: dict, out) -> None:
    if summary["status"] != "done":
        print(f"error: run {summary['status']}: {summary.get('error')} (run directory: {out})", file=sys.stderr)
        return
    b, p = summary["base"], summary["pruned"]
    base_lat, pruned_lat = _latency_entries(b), _latency_entries(p)
    device = pruned_lat[0]["device"]
    print(f"run directory: {out}  (protocol {summary['protocol']}, budget {summary['budget']})")
    print(f"latency: PyTorch on {device}; ONNX Runtime on {p.get('ort_latency_device', 'cpu')}, batch 1")
    ms_cols = [f"ms b{e['batch']}" for e in pruned_lat]
    print(f"{'':10} {'top1 %':>8} {'MMACs':>9} {'params M':>9} " + " ".join(f"{c:>9}" for c in ms_cols)
          + f" {'ORT ms':>8}")
    for name, r, lat in (("base", b, base_lat), ("pruned", p, pruned_lat)):
        ort = f"{r['ort_latency_ms']:.2f}" if r.get("ort_latency_ms") else "-"
        by_batch = {e["batch"]: e["ms"] for e in lat}
        ms = " ".join(f"{by_batch[e['batch']]:>9.2f}" if e["batch"] in by_batch else f"{'-':>9}" for e in pruned_lat)
        print(f"{name:10} {r['top1']:>8.2f} {r['macs'] / 1e6:>9.2f} {r['params'] / 1e6:>9.3f} {ms} {ort:>8}")
    paired = [e for e in pruned_lat if e.get("vs_base") is not None]
    if paired:
        ratios = ", ".join(f"batch {e['batch']}: {e['vs_base']:.3f}" for e in paired)
        print(f"pruned/base PyTorch latency on {device}, timed in interleaved pairs: {ratios} "
              "(the base ms columns are timed separately and drift with the machine's speed)")
    s = summary["search"]
    print(f"search: {s['strategy']}, {s['evaluations']} evaluations, best val top-1 {s['best_val_top1']:.2f}% "
          f"in {s['seconds']:.0f} s; ONNX max |diff| {summary.get('onnx_max_abs_diff')}")


def cmd_sensitivity(args) -> int:
    from .runs.job import run_sensitivity

    ratios = [float(r) for r in args.ratios.split(",")] if args.ratios else None
    summary = run_sensitivity(_config(args), args.out, ratios=ratios)
    if summary["status"] != "done":
        print(f"error: {summary.get('error')}", file=sys.stderr)
        return 2
    data = json.loads((Path(args.out) / "sensitivity.json").read_text())
    print(f"base top-1 {data['base_top1']:.2f}%  ({summary['evaluations']} evaluations)")
    print(f"{'group':<28}" + "".join(f"{r:>7.1f}" for r in data["ratios"]))
    for name, row in zip(data["groups"], data["top1"]):
        print(f"{name:<28}" + "".join(f"{v:>7.1f}" for v in row))
    return 0


def cmd_eval(args) -> int:
    from .data import load_data
    from .evaluate import accuracy
    from .runs.job import load_checkpoint
    from .measure import count_cost

    model, ckpt = load_checkpoint(args.checkpoint)
    data = load_data(args.data, args.data_root, protocol=args.protocol, val_size=args.val_size, seed=args.seed,
                     image_size=args.image_size)
    if data.num_classes != len(ckpt["classes"]):
        raise PrunerError(f"the checkpoint has {len(ckpt['classes'])} classes but {args.data} has {data.num_classes}")
    acc = accuracy(model, data.report, mean=ckpt["mean"], std=ckpt["std"])
    cost = count_cost(model, ckpt["input_size"])
    print(json.dumps({"top1": acc["top1"], "top5": acc["top5"], "images": len(data.report),
                      "macs": cost.macs, "params": cost.params, "protocol": data.protocol}, indent=2))
    return 0


def cmd_export(args) -> int:
    import torch

    from .export import export_onnx
    from .runs.job import load_checkpoint

    model, ckpt = load_checkpoint(args.checkpoint)
    sample = torch.randn(4, *ckpt["input_size"])
    rep = export_onnx(model, args.out, input_size=ckpt["input_size"], mean=ckpt["mean"], std=ckpt["std"],
                      class_names=ckpt["classes"], sample=sample)
    print(f"wrote {rep.path} (opset {rep.opset}); ONNX Runtime vs PyTorch max |diff| = {rep.max_abs_diff:.2e}")
    return 0


def cmd_strategies(args) -> int:
    from .search import strategy_class, strategy_names

    for name in strategy_names():
        cls = strategy_class(name)
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        print(f"{name}: {doc}")
        for k, v in cls.defaults().items():
            print(f"    --set {k}={v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pruner", description="RL-guided structured pruning of CNNs")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="prunable channel groups and their cost")
    _model_data_args(s)
    s.add_argument("--json", help="also write the groups to this JSON file")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("prune", help="search, fine-tune, evaluate and export (writes a run directory)")
    _model_data_args(s)
    _search_args(s)
    g = s.add_argument_group("fine-tuning and output")
    g.add_argument("--finetune-epochs", type=int, default=0)
    g.add_argument("--lr", type=float, default=0.01)
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--kd-temperature", type=float, default=4.0)
    g.add_argument("--kd-weight", type=float, default=0.9, help="share of the loss from distillation (0 = off)")
    g.add_argument("--max-batches-per-epoch", type=int, default=None)
    g.add_argument("--report-images", type=int, default=None, help="cap on report images (quick runs)")
    g.add_argument("--latency-batch", type=int, default=None,
                   help="throughput batch timed besides batch 1 on the run's device (default: 256 on CUDA, "
                        "none on the CPU); a latency budget is held at this batch (at 1 when there is none)")
    g.add_argument("--no-export", action="store_true", help="skip the ONNX export")
    g.add_argument("--out", required=True, help="run directory to create")
    g.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    s.set_defaults(func=cmd_prune)

    s = sub.add_parser("sensitivity", help="prune each group alone at several ratios")
    _model_data_args(s)
    _search_args(s)
    s.add_argument("--ratios", default=None, help="comma-separated pruning ratios (default 0.1,...,0.9)")
    s.add_argument("--out", required=True, help="run directory to create")
    s.set_defaults(func=cmd_sensitivity)

    s = sub.add_parser("eval", help="report-split accuracy of a pruned checkpoint")
    _model_data_args(s)
    s.add_argument("--checkpoint", required=True)
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("export", help="export a pruned checkpoint to ONNX (verified in ONNX Runtime)")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--out", required=True, help="the .onnx file to write")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("strategies", help="list search strategies and their hyperparameters")
    s.set_defaults(func=cmd_strategies)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PrunerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; resume a prune run with --resume --out DIR", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug; keep the one-line promise unless debugging
        if os.environ.get("PRUNER_DEBUG"):
            raise
        print(f"error: internal error ({type(exc).__name__}: {exc}); rerun with PRUNER_DEBUG=1 for details",
              file=sys.stderr)
        return 1
