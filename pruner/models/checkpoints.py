"""Pruned checkpoints: written by a run (``artifacts/checkpoint.pt``), read by ``export`` / ``eval``.

A pruned checkpoint holds the base model's spec, the :class:`~pruner.pruning.space.PruningRecord`
and the pruned weights, all as data (``torch.load(weights_only=True)``): loading it rebuilds the
base architecture (:mod:`pruner.models.registry`), replays the surgery and loads the weights. The
weight files a model starts from are read by :mod:`pruner.models.weights`.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..atomic import torch_save_atomic
from ..errors import PrunerError
from ..pruning.space import PruningRecord, apply_record
from .registry import SOURCES, ModelSpec, _parse_name, build_model
from .weights import _short_reason, load_state_dict_checked


#: ``format`` field of a pruned checkpoint.
CHECKPOINT_FORMAT = "pruner-checkpoint-v1"
CODE_TRUST_HINT = ("pass --trust-checkpoint (trust_checkpoint=True) only if you trust that file: importing it runs "
                   "its code")


def save_checkpoint(path: str | Path, session: Any, pruned: nn.Module, record: Any) -> None:
    """A checkpoint that rebuilds the pruned model with this package (see :func:`load_checkpoint`).

    ``session`` is a run's session: its ``spec`` (a :class:`~pruner.models.ModelSpec`) and
    ``data`` (``input_size``, ``mean``, ``std``, ``classes``) are stored next to the weights and
    the :class:`~pruner.pruning.space.PruningRecord`. Everything is tensors and plain data, so it
    loads with ``weights_only=True``.
    """
    state = {k: v.detach().cpu() for k, v in pruned.state_dict().items()}
    torch_save_atomic({
        "format": CHECKPOINT_FORMAT, "model_spec": asdict(session.spec), "record": record.to_dict(),
        "state_dict": state, "input_size": list(session.data.input_size), "mean": list(session.data.mean),
        "std": list(session.data.std), "classes": list(session.data.classes),
    }, path)


def _malformed(path: Any, what: str) -> PrunerError:
    return PrunerError(f"checkpoint {path} is malformed: {what}; use the artifacts/checkpoint.pt a run wrote")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_fields(ckpt: dict, path: Any) -> None:
    """Every field :func:`load_checkpoint` reads, with its type (a one-line error for the first bad one)."""
    need = ("model_spec", "record", "state_dict", "input_size", "mean", "std", "classes")
    missing = [k for k in need if k not in ckpt]
    if missing:
        raise _malformed(path, f"missing {', '.join(missing)}")
    spec = ckpt["model_spec"]
    if not isinstance(spec, dict) or not all(isinstance(spec.get(k), str) for k in ("source", "name")) \
            or isinstance(spec.get("num_classes"), bool) or not isinstance(spec.get("num_classes"), int) \
            or spec["num_classes"] < 1:
        raise _malformed(path, "model_spec must hold source, name (strings) and num_classes (a positive integer)")
    record = ckpt["record"]
    removed = record.get("removed") if isinstance(record, dict) else None
    if not isinstance(removed, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool)
                                                              for i in v) for k, v in removed.items()):
        raise _malformed(path, "record must be {'removed': {layer name: [channel indices]}}")
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                           for k, v in state.items()):
        raise _malformed(path, "state_dict must map parameter names to tensors")
    size = ckpt["input_size"]
    if not (isinstance(size, list) and len(size) == 3 and all(isinstance(s, int) and not isinstance(s, bool)
                                                               and 0 < s <= 4096 for s in size)):
        raise _malformed(path, "input_size must be [channels, height, width] (positive integers)")
    for key in ("mean", "std"):
        v = ckpt[key]
        if not (isinstance(v, list) and len(v) == size[0] and all(_is_number(x) and math.isfinite(x) for x in v)):
            raise _malformed(path, f"{key} must be {size[0]} finite numbers (one per input channel)")
    # images are scaled to [0, 1] before normalising: a mean outside [-1, 2] or a std outside
    # (1e-4, 100] is not a preprocessing setting but a damaged (or hostile) file
    if not all(-1.0 <= x <= 2.0 for x in ckpt["mean"]):
        raise _malformed(path, "mean must lie in [-1, 2] (images are scaled to [0, 1])")
    if not all(1e-4 < x <= 100.0 for x in ckpt["std"]):
        raise _malformed(path, "std must lie in (0.0001, 100]")
    classes = ckpt["classes"]
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise _malformed(path, "classes must be a non-empty list of names")
    if len(classes) != spec["num_classes"]:
        raise _malformed(path, f"{len(classes)} class names for a model with {spec['num_classes']} classes")


def _check_record(model: nn.Module, removed: dict[str, list[int]], path: Any) -> None:
    """Each named layer exists and each removed index is a distinct channel of it, leaving at least one."""
    modules = dict(model.named_modules())
    for name, idxs in removed.items():
        mod = modules.get(name)
        channels = getattr(mod, "out_channels", getattr(mod, "out_features", None)) if mod is not None else None
        if not isinstance(channels, int):
            raise _malformed(path, f"its pruning record names layer {name!r}, which the model has no prunable "
                                   "layer of")
        if len(set(idxs)) != len(idxs) or any(not 0 <= i < channels for i in idxs) or len(idxs) >= channels:
            raise _malformed(path, f"its pruning record removes channels of {name!r} that are out of range, "
                                   f"repeated or all of its {channels}")


def load_checkpoint(path: str | Path, *, trust_checkpoint: bool = False) -> tuple[nn.Module, dict]:
    """Rebuild a pruned model from :func:`save_checkpoint`'s file (base architecture + replayed surgery).

    The file is read as data (``weights_only=True``). A checkpoint whose model is a ``file:``
    model would import and run that Python file to rebuild the architecture: that needs
    ``trust_checkpoint=True``. Anything missing, of the wrong type or not matching the
    architecture is a one-line :class:`PrunerError`.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise PrunerError(f"checkpoint {path} does not exist; pass the artifacts/checkpoint.pt of a finished run")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickled code (refused by weights_only), a truncated or foreign file, ...
        raise PrunerError(f"could not read checkpoint {path}: {_short_reason(exc)}; pass the artifacts/checkpoint.pt "
                          "of a finished run") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise PrunerError(f"{path} is not a pruned checkpoint written by this tool; pass the artifacts/checkpoint.pt "
                          "of a finished run")
    _check_fields(ckpt, path)
    raw = ckpt["model_spec"]
    if raw["source"] not in SOURCES:
        raise _malformed(path, f"unknown model source {raw['source']!r}")
    # parsed as a --model string would be (unknown zoo/torchvision names are errors); the parsed source decides
    source, name = _parse_name(ModelSpec(raw["source"], raw["name"], raw["num_classes"], None).to_string())
    if source != raw["source"]:
        raise _malformed(path, f"model_spec source {raw['source']!r} does not match its name {raw['name']!r}")
    if source == "file" and not trust_checkpoint:
        file_name = name.rpartition(":")[0] or name
        raise PrunerError(f"checkpoint {path} rebuilds its model by running the Python file {file_name} "
                          f"(a file: model); {CODE_TRUST_HINT}")
    spec = ModelSpec(source, name, raw["num_classes"], None)
    model = build_model(spec)  # a missing file: model is a PrunerError too
    removed = {str(k): list(v) for k, v in ckpt["record"]["removed"].items()}
    _check_record(model, removed, path)
    try:
        model = apply_record(model, PruningRecord.from_dict({"removed": removed}), ckpt["input_size"], inplace=True)
    except PrunerError:
        raise
    except Exception as exc:  # Torch-Pruning could not replay it on this architecture
        raise _malformed(path, f"its pruning record does not replay on {spec.to_string()} "
                               f"({_short_reason(exc)})") from None
    load_state_dict_checked(model, ckpt["state_dict"], path)
    return model.eval(), ckpt
