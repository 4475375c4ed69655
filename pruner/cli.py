"""``python -m pruner``: a thin command-line shell over the engine.

Every command prints ``error: <what went wrong and what to do>`` and exits with status 2
on bad input; set ``PRUNER_DEBUG=1`` to see tracebacks of internal errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from pathlib import Path

from .errors import PrunerError

TRUST_HELP = ("accept a whole pickled model in --weights (unpickling runs arbitrary code from the file: "
              "only for files you trust)")
CHECKPOINT_TRUST_HELP = ("allow a checkpoint whose model is a file: model: rebuilding it imports and runs that Python "
                         "file (only for files you trust); other checkpoints load as data and need no trust")


def _defaults() -> dict:
    """The run settings' defaults, from the engine's ``RunConfig`` and ``FinetuneConfig``."""
    from .finetune import FinetuneConfig
    from .runs.config import RunConfig

    out = {f.name: f.default for f in fields(FinetuneConfig)}
    out.update({f.name: f.default for f in fields(RunConfig) if f.name != "finetune"})
    return out


def _model_data_args(p: argparse.ArgumentParser, d: dict) -> None:
    from .data import PROTOCOLS
    from .settings import DEVICES

    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=d["model"],
                   help="zoo name (resnet20/32/44/56/110, vgg16, vgg19, mobilenetv2, googlenet), "
                        "torchvision:NAME, or file:path/net.py:factory")
    g.add_argument("--weights", default=d["weights"],
                   help="'pretrained', a state-dict file, or 'none' for random initialisation")
    g.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    g.add_argument("--data", default=d["data"],
                   help="cifar10, cifar100, cifar10-jpeg, digits, or an ImageFolder path (train/ + test/ or val/)")
    g.add_argument("--data-root", default=None, help="datasets root (default: $PRUNER_DATA_ROOT)")
    g.add_argument("--protocol", default=d["protocol"], choices=PROTOCOLS,
                   help="search split: a val split carved from train, or half of test (the other half reports)")
    g.add_argument("--val-size", type=int, default=d["val_size"],
                   help="val images carved from train for val-from-train (default: 10%% of train, at most 5000)")
    g.add_argument("--image-size", type=int, default=d["image_size"], help="resize ImageFolder images to this size")
    g.add_argument("--device", default=d["device"], help=f"{', '.join(DEVICES)} (or cuda:N)")
    g.add_argument("--seed", type=int, default=d["seed"])


def _scoring_args(g, d: dict) -> None:
    from .pruning.importance import CRITERIA

    g.add_argument("--importance", default=d["importance"], choices=CRITERIA)
    g.add_argument("--search-images", type=int, default=d["search_images"],
                   help="search-split images scored per candidate")
    g.add_argument("--recal-images", type=int, default=d["recal_images"], help="training images for BN recalibration")
    g.add_argument("--workers", type=int, default=d["workers"], metavar="N",
                   help="score candidates on N Ray workers in parallel (0 = in this process; one per GPU on CUDA)")
    g.add_argument("--scoring-threads", type=int, default=d["scoring_threads"], metavar="N",
                   help="in this process on a CPU: score N candidates at once, each on its own thread "
                        "(default: the CPU threads, at most 4, for inputs up to 64 px; 1 = one at a time)")
    g.add_argument("--ray-address", default=d["ray_address"], metavar="ADDR",
                   help="join this Ray cluster (HOST:PORT, ray://HOST:PORT or auto; `ray start --head` prints it) "
                        "instead of starting a local Ray; an address nobody answers fails within 15 s")


def _search_args(p: argparse.ArgumentParser, d: dict) -> None:
    from .search import strategy_names

    g = p.add_argument_group("search")
    g.add_argument("--budget", default=d["budget"], help="flops=F, params=F or latency=F: fraction that remains; "
                   "sparsity=F: fraction of the conv/linear weights set to zero (shapes kept)")
    g.add_argument("--sparsity-pattern", default=d["sparsity_pattern"], metavar="PATTERN",
                   help="with a sparsity budget: unstructured (default) or 2:4 (2 of every 4 input weights zero, "
                        "for sparse tensor cores; at most sparsity=0.5)")
    g.add_argument("--strategy", default=d["strategy"],
                   help=f"{', '.join(strategy_names())} (see `python -m pruner strategies`)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="strategy hyperparameter, e.g. --set steps=8 --set noise=0.5 (repeatable)")
    _scoring_args(g, d)
    g.add_argument("--search-evals", type=int, default=d["search_evals"], help="cap on candidate evaluations")
    g.add_argument("--score", default=d["score"], metavar="SCORE",
                   help="what the search maximises on the search split: top1 (top-1 %%) or kl (fidelity to the "
                        "unpruned model's outputs on the same images, 100*exp(-KL)); both are recorded per candidate"),
    g.add_argument("--max-prune", type=float, default=d["max_prune"], help="largest fraction of any group that may go")
    g.add_argument("--round-to", type=int, default=None, metavar="N",
                   help="keep every pruned group's channels a multiple of N (1 = off; default 8 on CUDA, 1 on CPU; "
                        "16 makes ONNX Runtime on AVX-512 CPUs follow the MACs: bench/latency_vs_macs.py)")


def _parse_set(items: list[str]) -> dict:
    """``--set KEY=VALUE`` items as a dict (values parsed as JSON where they are JSON, else strings);
    the names and values are checked by ``RunConfig`` against the strategy's declared parameters."""
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise PrunerError(f"--set {item!r} must be KEY=VALUE, e.g. --set steps=3")
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def _config(args):
    from .finetune import FinetuneConfig
    from .runs.config import RunConfig

    weights = None if str(args.weights).lower() == "none" else args.weights
    kw = dict(model=args.model, weights=weights, trust_checkpoint=args.trust_checkpoint, data=args.data,
              data_root=args.data_root, protocol=args.protocol, val_size=args.val_size, image_size=args.image_size,
              device=args.device, seed=args.seed)
    if hasattr(args, "importance"):
        kw.update(importance=args.importance, search_images=args.search_images, recal_images=args.recal_images,
                  workers=args.workers, ray_address=args.ray_address,
                  scoring_threads=args.scoring_threads)
    kw["trust_code"] = True  # file:/python: code named on the user's own command line: consent (docs/security.md)
    if hasattr(args, "budget"):
        kw.update(budget=args.budget, strategy=args.strategy, strategy_params=_parse_set(args.set),
                  search_evals=args.search_evals, score=args.score, max_prune=args.max_prune,
                  round_to=args.round_to, sparsity_pattern=args.sparsity_pattern)
    if hasattr(args, "finetune_epochs"):
        ft = dict(epochs=args.finetune_epochs, lr=args.lr, kd_temperature=args.kd_temperature, kd_weight=args.kd_weight,
                  batch_size=args.batch_size, max_batches_per_epoch=args.max_batches_per_epoch, warmup=args.warmup,
                  seed=args.seed)
        if args.recipe:   # the recipe's settings, but for the fine-tuning flags typed on the command line
            typed = _given_options(args.argv)
            ft = {k: v for k, v in ft.items() if k == "seed" or _FT_DESTS.get(k, k) in typed}
            kw["recipe"] = args.recipe
        else:
            ft = FinetuneConfig(**ft)
        kw["finetune"] = ft
        kw["report_images"] = args.report_images
        kw["latency_batch"] = args.latency_batch
        kw["export"] = not args.no_export
        kw["quantize"] = args.quantize
        kw["calibration_images"] = args.calibration_images
    return RunConfig(**kw)


def cmd_info(args) -> int:
    from .pruning.space import frozen_note
    from .runs.job import Session

    s = Session(_config(args))
    print(f"model {args.model}: {s.space.base_macs / 1e6:.2f} M MACs, {s.space.base_params / 1e6:.3f} M params, "
          f"{len(s.space)} prunable groups; data {s.data.name}: {s.data.num_classes} classes, "
          f"fit/search/report = {len(s.data.fit)}/{len(s.data.search)}/{len(s.data.report)} ({s.data.protocol})")
    print(f"{'#':>3} {'group':<28} {'channels':>8} {'layers':>6} {'MACs %':>7} {'params %':>8}")
    for g in s.space.groups:
        print(f"{g.index:>3} {g.name:<28} {g.channels:>8} {len(g.layers):>6} "
              f"{100 * g.macs / s.space.base_macs:>7.1f} {100 * g.params / s.space.base_params:>8.1f}")
    frozen = s.space.frozen_report()
    if frozen["groups"]:
        print(frozen_note(frozen))
        print(f"{'':>3} {'frozen group':<28} {'channels':>8} {'layers':>6}  why")
        for f in frozen["groups"]:
            print(f"{'':>3} {f['name']:<28} {f['channels']:>8} {len(f['layers']):>6}  {f['reason']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"groups": [g.to_dict() for g in s.space.groups], "frozen": frozen,
                                               "macs": s.space.base_macs, "params": s.space.base_params}, indent=2))
    return 0


# prune option (argparse dest) -> the RunConfig field it sets (dotted for the fine-tuning block)
_PRUNE_FIELDS = {"finetune_epochs": "finetune.epochs", "lr": "finetune.lr", "batch_size": "finetune.batch_size",
                 "kd_temperature": "finetune.kd_temperature", "kd_weight": "finetune.kd_weight",
                 "max_batches_per_epoch": "finetune.max_batches_per_epoch", "warmup": "finetune.warmup",
                 "no_export": "export",
                 "set": "strategy_params"}
_UNSET = object()
# FinetuneConfig field -> its prune option's dest, where they differ
_FT_DESTS = {"epochs": "finetune_epochs"}


def _given_options(argv: list[str]) -> set[str]:
    """The dests of the options typed on the command line (not left at their defaults)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for p in sub.choices.values():
        for a in p._actions:
            if a.dest != "help":
                a.default = None if isinstance(a, argparse._AppendAction) else _UNSET
    ns = parser.parse_args(argv)
    return {k for k, v in vars(ns).items() if v is not _UNSET and v is not None}


def _field(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = (node or {}).get(part) if isinstance(node, dict) else None
    return node


def _resume_overrides(args, stored: dict) -> dict:
    """Options typed with --resume, as overrides of the run's stored settings. Typing a setting
    with its stored value is fine; changing one that defines the search is a one-line error."""
    from .runs.job import RESUME_OVERRIDES

    given = _given_options(args.argv) - {"out", "resume", "command", "func", "progress", "quiet"}
    typed = _config(args).to_dict()     # validates the typed values too
    overrides = {}
    for dest in sorted(given):
        field = _PRUNE_FIELDS.get(dest, dest)
        new, old = _field(typed, field), _field(stored, field)
        if new == old:
            continue
        if dest == "recipe":
            raise PrunerError("--recipe cannot be given with --resume: type the fine-tuning options to change "
                              "instead (e.g. --finetune-epochs 10 --warmup 0.1)")
        if field not in RESUME_OVERRIDES:
            flag = "--" + dest.replace("_", "-")
            raise PrunerError(f"{flag} cannot change when resuming (the run has {old!r}): it would change what the "
                              "search means; start a new run with another --out (a resume may change --batch-size, "
                              "--finetune-epochs, --lr, --kd-temperature, --kd-weight, --max-batches-per-epoch, --warmup, "
                              "--report-images and --no-export)")
        overrides[field] = new
    return overrides


def _progress_mode(args) -> str:
    return "none" if args.quiet else args.progress


def _check_new_run(config, out) -> None:
    """Everything checkable without data, before the run directory is created (nothing is left behind)."""
    from .runs.rundir import RunDir, check_out_dir

    RunDir(out).check_new()
    check_out_dir(out)
    config.check_sources()


def cmd_prune(args) -> int:
    from .progress import open_progress
    from .runs.job import apply_resume_overrides, resume_job, run_job
    from .runs.rundir import RunDir, Status

    if args.resume:
        run = RunDir(args.out)
        stored = run.config()
        if stored is None:
            raise PrunerError(f"nothing to resume in {args.out}: it has no readable config.json")
        overrides = _resume_overrides(args, stored)
        shown = apply_resume_overrides(stored, overrides)[0].to_dict()   # what the resumed run will do
        with open_progress(_progress_mode(args), shown, earlier=run.iter_events()) as on_event:
            summary = resume_job(args.out, overrides=overrides, on_event=on_event)
    else:
        config = _config(args)
        _check_new_run(config, args.out)
        with open_progress(_progress_mode(args), config.to_dict()) as on_event:
            summary = run_job(config, args.out, on_event=on_event)
    _print_summary(summary, args.out)
    return 0 if summary["status"] == Status.DONE else (3 if summary["status"] == Status.CANCELLED else 2)


def _latency_entries(r: dict) -> list[dict]:
    """A report's latency figures with device and batch (summaries written before they were recorded
    were timed on the CPU at batch 1)."""
    if r.get("latency"):
        return r["latency"]
    return [{"device": r.get("latency_device", "cpu"), "batch": r.get("latency_batch", 1), "ms": r["latency_ms"],
             "vs_base": r.get("latency_vs_base")}]


def _print_summary(summary: dict, out) -> None:
    from .runs.rundir import Status

    if summary["status"] != Status.DONE:
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
    # one latency story: where the pruned model was timed in pairs with the original, the original's ms
    # are its median in those pairs (not a separately timed figure that drifted with the machine)
    paired_base = [{"batch": e["batch"], "ms": e["reference_ms"]} for e in pruned_lat if e.get("reference_ms")]
    for name, r, lat in (("base", b, paired_base or base_lat), ("pruned", p, pruned_lat)):
        ort = f"{r['ort_latency_ms']:.2f}" if r.get("ort_latency_ms") else "-"
        by_batch = {e["batch"]: e["ms"] for e in lat}
        ms = " ".join(f"{by_batch[e['batch']]:>9.2f}" if e["batch"] in by_batch else f"{'-':>9}" for e in pruned_lat)
        print(f"{name:10} {r['top1']:>8.2f} {r['macs'] / 1e6:>9.2f} {r['params'] / 1e6:>9.3f} {ms} {ort:>8}")
    paired = [e for e in pruned_lat if e.get("vs_base") is not None]
    if paired:
        def one(e: dict) -> str:
            iqr = e.get("vs_base_iqr")
            return f"batch {e['batch']}: {e['vs_base']:.3f}" + (f" (middle half {iqr[0]:.3f}-{iqr[1]:.3f})" if iqr else "")

        print(f"pruned/base PyTorch latency on {device}, median of interleaved pairs: "
              + ", ".join(one(e) for e in paired) + "; the ms columns are both models' medians in those pairs")
    sp = summary.get("sparsity")
    if sp:
        onnx = sp.get("onnx") or {}
        print(f"sparsity ({sp['pattern']}): {sp['sparsity']:.4f} of {sp['prunable_weights']} prunable weights zero, "
              f"{sp['nonzero_params']} non-zero params; {sp['dense_bytes'] / 1e6:.3f} MB dense, "
              f"{sp['bitmask_bytes'] / 1e6:.3f} MB bitmask+values, {sp['csr_bytes'] / 1e6:.3f} MB CSR"
              + (f"; ONNX {onnx['zeros']} zero weights, {onnx['bytes'] / 1e6:.3f} MB, "
                 f"{onnx['zipped_bytes'] / 1e6:.3f} MB zipped" if onnx else ""))
    s = summary["search"]
    threads = s.get("scoring_threads") or 1
    print(f"search: {s['strategy']}, {s['evaluations']} evaluations, best val top-1 {s['best_val_top1']:.2f}% "
          f"in {s['seconds']:.0f} s" + (f" ({threads} candidates at a time on CPU threads)" if threads > 1 else "")
          + f"; ONNX max |diff| {summary.get('onnx_max_abs_diff')}")
    check = s.get("latency_check") or {}
    if check.get("advice"):
        print(f"warning: {check['advice']}", file=sys.stderr)
    if summary.get("quantized"):
        _print_quantized(summary["quantized"])


def cmd_sensitivity(args) -> int:
    from dataclasses import replace

    from .progress import open_progress
    from .runs.job import run_sensitivity
    from .runs.rundir import SENSITIVITY, RunDir, Status
    from .sensitivity import DEFAULT_RATIOS, parse_ratios

    ratios = parse_ratios(args.ratios) if args.ratios is not None else list(DEFAULT_RATIOS)
    # every ratio must be reachable: a group may lose up to the largest ratio of its channels
    config = replace(_config(args), max_prune=max(_defaults()["max_prune"], max(ratios)), search_evals=None)
    _check_new_run(config, args.out)
    with open_progress(_progress_mode(args), config.to_dict(), kind=SENSITIVITY) as on_event:
        summary = run_sensitivity(config, args.out, ratios=ratios, on_event=on_event)
    if summary["status"] != Status.DONE:
        print(f"error: {summary.get('error')}", file=sys.stderr)
        return 2
    data = RunDir(args.out).sensitivity_result()
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

    _config(args)  # the settings are checked before any work
    model, ckpt = load_checkpoint(args.checkpoint, trust_checkpoint=args.trust_checkpoint)
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
    from .models.checkpoints import load_checkpoint

    model, ckpt = load_checkpoint(args.checkpoint, trust_checkpoint=args.trust_checkpoint)
    sample = torch.randn(4, *ckpt["input_size"])
    rep = export_onnx(model, args.out, input_size=ckpt["input_size"], mean=ckpt["mean"], std=ckpt["std"],
                      class_names=ckpt["classes"], sample=sample)
    print(f"wrote {rep.path} (opset {rep.opset}); ONNX Runtime vs PyTorch max |diff| = {rep.max_abs_diff:.2e}")
    return 0


def cmd_quantize(args) -> int:
    from .runs.job import quantize_finished_run

    q = quantize_finished_run(args.run, calibration_images=args.calibration_images)
    if q.get("error"):
        raise PrunerError(f"INT8 quantization failed: {q['error']} (the run's fp32 artifacts are unchanged)")
    _print_quantized(q)
    return 0


def _print_quantized(q: dict) -> None:
    """The summary's ``quantized`` section as two lines (or its error)."""
    if q.get("error"):
        print(f"INT8: failed ({q['error']}); the fp32 artifacts are unchanged")
        return
    c = q["calibration"]
    print(f"INT8 (QDQ, ONNX Runtime): top-1 {q['top1']:.2f}% vs fp32 {q['top1_fp32']:.2f}% on {q['images']} report "
          f"images ({q['agreement']:.1f}% same class); {q['size_bytes'] / 1e6:.3f} MB vs {q['size_fp32_bytes'] / 1e6:.3f}"
          f" MB; calibrated on {c['images']} fine-tune images ({c['method']})")
    print("INT8 ONNX Runtime latency, timed in interleaved pairs: " + ", ".join(
        f"{e['device']} batch {e['batch']}: {e['ms']:.2f} ms, x{e['vs_fp32']:.2f} of fp32 pruned"
        + (f", x{e['vs_original']:.2f} of original" if e.get("vs_original") is not None else "")
        for e in q["ort_latency"]))


def cmd_strategies(args) -> int:
    from .search import strategy_class, strategy_names

    for name in strategy_names():
        cls = strategy_class(name)
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        print(f"{name}: {doc}")
        print(f"    budgets: {', '.join(cls.budget_kinds)}")
        if not cls.param_specs:
            print("    (no parameters)")
        for k, p in cls.param_specs.items():
            default = "" if p.default is None else p.default if isinstance(p.default, str) else json.dumps(p.default)
            print(f"    {f'--set {k}={default}':<32} {p.range_text()}; {p.help}")
    return 0


def _progress_args(p: argparse.ArgumentParser) -> None:
    from .progress import MODES

    g = p.add_argument_group("progress")
    g.add_argument("--progress", default="auto", choices=MODES,
                   help="progress on stderr: a live bar (phase, evaluations, best within the budget, fine-tuning "
                        "epoch and batch, ETA), plain lines for logs, or none; auto: the bar on a terminal, "
                        "else plain lines")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress (as --progress none)")


def _finetune_output_args(s: argparse.ArgumentParser, d: dict) -> None:
    """``prune``'s fine-tuning, report, export and output options."""
    from .recipes import DESCRIPTIONS, RECIPES

    g = s.add_argument_group("fine-tuning and output")
    g.add_argument("--recipe", default=None, choices=list(RECIPES),
                   help="fine-tuning recipe: " + "; ".join(f"{k}: {v}" for k, v in DESCRIPTIONS.items()).replace("%", "%%")
                        + " (distillation T=4, weight 0.9, batch 128, lr 0.01); the fine-tuning options typed "
                          "with it override its settings")
    g.add_argument("--finetune-epochs", type=int, default=d["epochs"])
    g.add_argument("--warmup", type=float, default=d["warmup"], metavar="SHARE",
                   help="share of the fine-tuning steps with a linear learning-rate warm-up before the cosine decay")
    g.add_argument("--lr", type=float, default=d["lr"])
    g.add_argument("--batch-size", type=int, default=d["batch_size"])
    g.add_argument("--kd-temperature", type=float, default=d["kd_temperature"])
    g.add_argument("--kd-weight", type=float, default=d["kd_weight"],
                   help="share of the loss from distillation (0 = off)")
    g.add_argument("--max-batches-per-epoch", type=int, default=d["max_batches_per_epoch"])
    g.add_argument("--report-images", type=int, default=d["report_images"], help="cap on report images (quick runs)")
    g.add_argument("--latency-batch", type=int, default=d["latency_batch"],
                   help="throughput batch timed besides batch 1 on the run's device (default: 256 on CUDA, "
                        "none on the CPU); a latency budget is held at this batch (at 1 when there is none)")
    g.add_argument("--no-export", action="store_true", help="skip the ONNX export")
    g.add_argument("--quantize", default=d["quantize"], choices=["int8"],
                   help="also write model.int8.onnx: ONNX Runtime static INT8 quantization (QDQ, per-channel "
                        "weights) calibrated on fine-tune images, verified on the report split")
    g.add_argument("--calibration-images", type=int, default=d["calibration_images"], metavar="N",
                   help="fine-tune-split images INT8 calibration uses (with --quantize)")
    g.add_argument("--out", required=True, help="run directory to create")
    g.add_argument("--resume", action="store_true",
                   help="continue the interrupted, failed or cancelled run in --out; it keeps its settings, except "
                        "fine-tuning and reporting options typed with it (e.g. a smaller --batch-size)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pruner", description="RL-guided structured pruning of CNNs")
    sub = p.add_subparsers(dest="command", required=True)
    d = _defaults()

    s = sub.add_parser("info", help="prunable channel groups and their cost")
    _model_data_args(s, d)
    s.add_argument("--json", help="also write the groups to this JSON file")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("prune", help="search, fine-tune, evaluate and export (writes a run directory)")
    _model_data_args(s, d)
    _search_args(s, d)
    _finetune_output_args(s, d)
    _progress_args(s)
    s.set_defaults(func=cmd_prune)

    s = sub.add_parser("sensitivity", help="prune each group alone at several ratios")
    _model_data_args(s, d)
    _scoring_args(s.add_argument_group("scoring"), d)
    s.add_argument("--ratios", default=None,
                   help="comma-separated fractions of a group's channels removed, each in (0, 1) "
                        "(default 0.1,...,0.9)")
    s.add_argument("--out", required=True, help="run directory to create")
    _progress_args(s)
    s.set_defaults(func=cmd_sensitivity)

    s = sub.add_parser("eval", help="report-split accuracy of a pruned checkpoint (--trust-checkpoint also allows "
                                    "a checkpoint of a file: model)")
    _model_data_args(s, d)
    s.add_argument("--checkpoint", required=True)
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("export", help="export a pruned checkpoint to ONNX (verified in ONNX Runtime)")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--out", required=True, help="the .onnx file to write")
    s.add_argument("--trust-checkpoint", action="store_true", help=CHECKPOINT_TRUST_HELP)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("quantize", help="INT8 for a finished run (model.int8.onnx, verified on its report split)")
    s.add_argument("--run", required=True, metavar="DIR", help="the finished prune run's directory")
    s.add_argument("--calibration-images", type=int, default=None, metavar="N",
                   help=f"fine-tune-split images to calibrate on (default: the run's, else {d['calibration_images']})")
    s.set_defaults(func=cmd_quantize)

    s = sub.add_parser("strategies", help="list search strategies and their hyperparameters")
    s.set_defaults(func=cmd_strategies)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
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
