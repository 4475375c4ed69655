"""Fine-tuning throughput: seconds per epoch of ``pruner.finetune`` (SGD + distillation).

    python bench/finetune_speed.py --model resnet56 --data cifar10-jpeg --epochs 2          # on CUDA: full epochs
    python bench/finetune_speed.py --model resnet20 --data cifar10-jpeg --device cpu \\
        --epochs 2 --max-batches 20                                                        # CPU: a subset

The student is the pretrained model itself and the teacher a copy of it (the cost of an epoch
does not depend on the weights). The first epoch includes warm-up (cuDNN autotuning,
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
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto", help="bf16 autocast (auto: CUDA only)")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile student and teacher")
    p.add_argument("--json", default=None, help="also write the result to this file")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    data = load_data(args.data, protocol="test-halves")
    spec = parse_model_spec(args.model, num_classes=data.num_classes,
                            weights=None if args.weights == "none" else args.weights)
    student = build_model(spec)
    teacher = copy.deepcopy(student)
    options = {}
    for name, value in (("amp", _flag(args.amp)), ("channels_last", _flag(args.channels_last))):
        if value is not None:
            options[name] = value
    if args.compile:
        options["compile"] = True
    cfg = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size, kd_weight=args.kd_weight,
                         max_batches_per_epoch=args.max_batches, **options)
    t0 = time.perf_counter()
    history = finetune(student, data, cfg, teacher=teacher, device=device)
    total = time.perf_counter() - t0
    seconds = [h["seconds"] for h in history]
    timed = seconds[1:] or seconds
    full = len(data.fit) // args.batch_size
    done = min(full, args.max_batches) if args.max_batches else full
    per_epoch = statistics.median(timed) * full / done
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    result = {"device": name, "torch": torch.__version__, "model": args.model, "data": data.name,
              "train_images": len(data.fit), "batch_size": args.batch_size, "batches_timed": done,
              "kd": args.kd_weight > 0, "options": options, "epoch_seconds": [round(s, 3) for s in seconds],
              "s_per_full_epoch": round(per_epoch, 2), "images_per_s": round(done * args.batch_size / statistics.median(timed), 1),
              "wall_s": round(total, 1)}
    print(f"device: {name}; torch {torch.__version__}; {args.model} on {data.name} ({len(data.fit)} training images), "
          f"batch {args.batch_size}, KD {'on' if args.kd_weight > 0 else 'off'}, options {options or 'defaults'}")
    print(f"epochs (s): {', '.join(f'{s:.2f}' for s in seconds)}  ({done} batches each)")
    print(f"fine-tune: {per_epoch:.2f} s per full epoch ({result['images_per_s']:.0f} images/s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
