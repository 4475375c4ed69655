"""Fine-tuning throughput: seconds per epoch of ``pruner.finetune`` (SGD + distillation).

    python bench/finetune_speed.py --model resnet56 --data cifar10-jpeg --epochs 2          # on CUDA: full epochs
    python bench/finetune_speed.py --model resnet20 --data cifar10-jpeg --device cpu \\
        --epochs 2 --max-batches 20                                                        # CPU: a subset
    python bench/finetune_speed.py --model resnet56 --budget flops=0.5 --device cpu \\
        --epochs 2 --max-batches 20 --amp on --channels-last on                            # a pruned student

The student is the pretrained model itself and the teacher a copy of it (the cost of an epoch
does not depend on the weights); with ``--budget`` the student is the model pruned uniformly
(every group in the same proportion, L1 ranking) onto that budget and the teacher the unpruned
model, as in a run's fine-tuning. ``--seed`` fixes the batch order and augmentation, so two
invocations that differ only in ``--amp`` / ``--channels-last`` are a same-seed pair: compare the
loss and top-1 they print.

``--pair-with amp=off,channels_last=off`` compares the chosen options with those in one process,
as a shared machine needs: ``--rounds`` interleaved timing rounds (each set-up fine-tunes a fresh
copy of the student for one capped epoch, the order alternating A B, B A, ...; the figure is the
median of the per-round time ratios), then the same-seed pair: each set-up fine-tunes its own copy
for ``--epochs`` from the same seed, and the losses and top-1s are printed side by side.

    python bench/finetune_speed.py --model resnet56 --budget flops=0.5 --device cpu --amp on \\
        --channels-last off --pair-with amp=off,channels_last=off --rounds 4 --max-batches 10 --epochs 2 The first epoch includes warm-up (cuDNN autotuning,
``--compile``'s compilation); the figure reported is the median of the later epochs (of all
epochs when only one is run), scaled to a full pass over the training split when
``--max-batches`` caps an epoch. Prints the device, options and torch version with the figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pruner.data import load_data  # noqa: E402
from pruner.finetune import FinetuneConfig, finetune  # noqa: E402
from pruner.models import build_model, parse_model_spec  # noqa: E402
from pruner.settings import resolve_device  # noqa: E402


def _flag(value: str) -> bool | None:
    return {"auto": None, "on": True, "off": False}[value]


def _uniformly_pruned(model: torch.nn.Module, data, budget: str) -> tuple[torch.nn.Module, float]:
    """``model`` pruned with every group in the same proportion onto ``budget`` (L1 ranking)."""
    from pruner.budget import Budget, solve
    from pruner.pruning.importance import channel_scores, ranking_from_scores
    from pruner.pruning.space import PruningSpace

    space = PruningSpace(model, data.input_size)
    space.set_ranking(ranking_from_scores(channel_scores(model, space, "l1")))
    solution = solve(space, [1.0] * len(space), Budget.parse(budget))
    pruned, _ = space.prune(model, solution.counts)
    base_flops, _ = space.predict(counts=[g.channels for g in space.groups])
    flops, _ = space.predict(counts=solution.counts)
    return pruned, flops / base_flops


def _eval_data(args, data):
    """The search-split images each epoch's top-1 is measured on (None: --eval-images 0)."""
    return data.search.subset(min(args.eval_images, len(data.search))) if args.eval_images > 0 else None


def _options(text: str) -> dict:
    out = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key not in ("amp", "channels_last", "compile") or value not in ("on", "off"):
            raise SystemExit(f"--pair-with takes amp/channels_last/compile=on|off, comma-separated; got {item!r}")
        out[key] = value == "on"
    return out


def _paired(args, data, student, teacher, cfg: FinetuneConfig, ref_options: dict, device) -> int:
    """Interleaved timing rounds, then a same-seed pair (see the module docstring)."""
    from dataclasses import replace

    import numpy as np

    setups = {"reference": replace(cfg, **ref_options), "chosen": cfg}
    seconds = {k: [] for k in setups}
    for r in range(args.rounds):
        order = list(setups) if r % 2 == 0 else list(reversed(setups))
        for k in order:
            one = replace(setups[k], epochs=1, max_batches_per_epoch=args.max_batches or 10)
            seconds[k].append(finetune(copy.deepcopy(student), data, one, teacher=teacher, device=device)[0]["seconds"])
    ratios = np.array(seconds["chosen"]) / np.array(seconds["reference"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    pruned = f" pruned uniformly to {args.budget}" if args.budget else ""
    print(f"device: {name}; torch {torch.__version__}; {args.model}{pruned} on {data.name}, batch {args.batch_size}, "
          f"KD {'on' if args.kd_weight > 0 else 'off'}")
    print(f"reference {ref_options} vs chosen {_set(cfg)}: {args.rounds} interleaved rounds of "
          f"{args.max_batches or 10} batches")
    for k in setups:
        print(f"  {k:<9} s per round: {', '.join(f'{x:.2f}' for x in seconds[k])}")
    print(f"chosen / reference time, interleaved pairs: median {np.median(ratios):.3f} (range {ratios.min():.3f}-"
          f"{ratios.max():.3f}); speed-up {1 / np.median(ratios):.2f}x")
    eval_data = _eval_data(args, data)
    runs = {k: finetune(copy.deepcopy(student), data, c, teacher=teacher, device=device, eval_data=eval_data)
            for k, c in setups.items()}
    print(f"same-seed pair (seed {cfg.seed}, {cfg.epochs} epochs x {args.max_batches or 'all'} batches):")
    for k, hist in runs.items():
        losses = ", ".join(f"{h['loss']:.5f}" for h in hist)
        print(f"  {k:<9} loss {losses}; val top-1 {', '.join(str(h.get('val_top1')) for h in hist)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "torch": torch.__version__, "model": args.model,
                                               "budget": args.budget, "reference": ref_options, "chosen": _set(cfg),
                                               "round_seconds": seconds, "median_ratio": float(np.median(ratios)),
                                               "pair": runs}, indent=2))
    return 0


def _set(cfg: FinetuneConfig) -> dict:
    return {k: getattr(cfg, k) for k in ("amp", "channels_last", "compile")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--weights", default="pretrained")
    p.add_argument("--data", default="cifar10-jpeg")
    p.add_argument("--device", default="auto")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-batches", type=int, default=None, help="cap on batches per epoch (CPU-sized runs)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--kd-weight", type=float, default=0.9, help="0 = no teacher")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto", help="bf16 autocast (auto: the device default, pruner.settings.native_bf16)")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile student and teacher")
    p.add_argument("--budget", default=None, help="prune the student uniformly onto this budget, e.g. flops=0.5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-images", type=int, default=1000,
                   help="top-1 after each epoch on this many search-split images (not timed; 0 = none)")
    p.add_argument("--pair-with", default=None, metavar="OPTS",
                   help="compare with these options in one process, e.g. amp=off,channels_last=off")
    p.add_argument("--rounds", type=int, default=4, help="interleaved timing rounds of --pair-with")
    p.add_argument("--json", default=None, help="also write the result to this file")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    data = load_data(args.data, protocol="test-halves")
    spec = parse_model_spec(args.model, num_classes=data.num_classes,
                            weights=None if args.weights == "none" else args.weights)
    student = build_model(spec)
    teacher = copy.deepcopy(student)
    flops_ratio = None
    if args.budget:
        student, flops_ratio = _uniformly_pruned(student, data, args.budget)
    options = {}
    for name, value in (("amp", _flag(args.amp)), ("channels_last", _flag(args.channels_last))):
        if value is not None:
            options[name] = value
    if args.compile:
        options["compile"] = True
    cfg = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size, kd_weight=args.kd_weight,
                         max_batches_per_epoch=args.max_batches, seed=args.seed, **options)
    if args.pair_with:
        return _paired(args, data, student, teacher, cfg, _options(args.pair_with), device)
    t0 = time.perf_counter()
    eval_data = _eval_data(args, data)
    history = finetune(student, data, cfg, teacher=teacher, device=device, eval_data=eval_data)
    total = time.perf_counter() - t0
    seconds = [h["seconds"] for h in history]
    timed = seconds[1:] or seconds
    full = len(data.fit) // args.batch_size
    done = min(full, args.max_batches) if args.max_batches else full
    per_epoch = statistics.median(timed) * full / done
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    result = {"device": name, "torch": torch.__version__, "model": args.model, "budget": args.budget,
              "flops_ratio": flops_ratio, "seed": args.seed, "data": data.name,
              "train_images": len(data.fit), "batch_size": args.batch_size, "batches_timed": done,
              "kd": args.kd_weight > 0, "options": options, "epoch_seconds": [round(s, 3) for s in seconds],
              "s_per_full_epoch": round(per_epoch, 2), "images_per_s": round(done * args.batch_size / statistics.median(timed), 1),
              "wall_s": round(total, 1),
              "loss": [round(h["loss"], 5) for h in history], "val_top1": [h.get("val_top1") for h in history]}
    pruned = f" pruned uniformly to {args.budget} (FLOPs ratio {flops_ratio:.3f})" if args.budget else ""
    print(f"device: {name}; torch {torch.__version__}; {args.model}{pruned} on {data.name} ({len(data.fit)} training images), "
          f"batch {args.batch_size}, KD {'on' if args.kd_weight > 0 else 'off'}, options {options or 'defaults'}")
    print(f"epochs (s): {', '.join(f'{s:.2f}' for s in seconds)}  ({done} batches each)")
    print(f"fine-tune: {per_epoch:.2f} s per full epoch ({result['images_per_s']:.0f} images/s)")
    print(f"seed {args.seed}: loss per epoch {', '.join(f'{x:.5f}' for x in result['loss'])}; "
          f"val top-1 {', '.join(str(x) for x in result['val_top1'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
