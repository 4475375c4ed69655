"""Reading weight files safely and loading them into a model with clear errors.

Files are read with ``torch.load(weights_only=True)``: tensors and plain containers only.
A whole pickled ``nn.Module`` (or any other pickled Python object) needs
``trust_checkpoint=True`` because unpickling can run arbitrary code.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..atomic import torch_save_atomic
from ..errors import PrunerError

#: Keys under which training scripts commonly nest the state dict.
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net")
#: Prefixes added by ``nn.DataParallel`` / ``DistributedDataParallel`` and ``torch.compile``.
STRIP_PREFIXES = ("module.", "_orig_mod.")
TRUST_HINT = ("unpickling runs arbitrary code, so pass --trust-checkpoint (trust_checkpoint=True) only for files "
              "you trust, or re-save it with torch.save(model.state_dict(), path)")

StateDict = dict[str, torch.Tensor]


def _short_reason(exc: BaseException) -> str:
    """First informative line of an exception (``torch.load`` errors span many lines)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[0] if lines else ""
    line = line if len(line) <= 160 else line[:157] + "..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def read_checkpoint(path: str | Path, *, trust_checkpoint: bool = False) -> Any:
    """``torch.load`` a file on CPU, turning every failure into a :class:`PrunerError`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PrunerError(f"weights file {path} does not exist; check the path (or use weights=None for random init)")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as exc:
        if not trust_checkpoint and "Unsupported global" in str(exc):
            raise PrunerError(f"checkpoint {path} contains pickled Python objects (e.g. a whole nn.Module), not just "
                              f"tensors; {TRUST_HINT}") from None
        raise PrunerError(f"could not read checkpoint {path}: {_short_reason(exc)}; is it a PyTorch state dict?") from None
    except Exception as exc:  # corrupt zip, truncated file, foreign format, missing class on unpickling, ...
        raise PrunerError(f"could not read checkpoint {path}: {_short_reason(exc)}; is it a PyTorch state dict?") from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and any(isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(obj: Any, path: str | Path) -> StateDict:
    """The tensors of a loaded checkpoint: a state dict, ``{"state_dict"|"model": ...}`` or a trusted module."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    elif isinstance(obj, Mapping) and not _is_state_dict(obj):
        nested = next((obj[k] for k in NESTED_KEYS if k in obj), None)
        if isinstance(nested, nn.Module):
            nested = nested.state_dict()
        if nested is None or not _is_state_dict(nested):
            keys = ", ".join(map(str, list(obj)[:8]))
            raise PrunerError(f"checkpoint {path} holds no state dict (top-level keys: {keys}); expected tensors, or "
                              f"one of the keys {', '.join(NESTED_KEYS)}")
        obj = nested
    if not _is_state_dict(obj):
        raise PrunerError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict; save it with "
                          "torch.save(model.state_dict(), path)")
    state: StateDict = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue  # e.g. a stray "best_prec1" next to the tensors
        key = str(key)
        for prefix in STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    return state


def classifier_weight_key(model: nn.Module) -> str | None:
    """State-dict key of the final classifier's weight: the last ``nn.Linear`` (else the last ``nn.Conv2d``)."""
    last_linear = last_conv = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_linear = name
        elif isinstance(module, nn.Conv2d):
            last_conv = name
    name = last_linear if last_linear is not None else last_conv
    return None if name is None else f"{name}.weight"


def _few(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_state_dict_checked(model: nn.Module, state: StateDict, path: str | Path, *, num_classes: int | None = None) -> None:
    """Load ``state`` into ``model`` with all keys and shapes matching; explain any mismatch."""
    expected = model.state_dict()
    head = classifier_weight_key(model)
    if head is not None and head in state and head in expected and state[head].shape[:1] != expected[head].shape[:1]:
        have, want = state[head].shape[0], expected[head].shape[0]
        who = "the dataset" if num_classes is None or num_classes == want else "the model"
        raise PrunerError(f"checkpoint has {have} classes but {who} has {want}; use a checkpoint trained for {want} "
                          f"classes, or weights=None to start from random init (checkpoint: {path})")
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {_few(unexpected)})")
        raise PrunerError(f"checkpoint {path} does not match the model architecture: {'; '.join(parts)}; "
                          "check that the model spec is the one the weights were trained with")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if wrong:
        raise PrunerError(f"checkpoint {path} has tensors of the wrong shape (checkpoint vs model): {_few(wrong, 3)}; "
                          "check that the model spec is the one the weights were trained with")
    model.load_state_dict(state, strict=False)  # keys verified above; old files may lack num_batches_tracked


def load_weights_file(model: nn.Module, path: str | Path, *, trust_checkpoint: bool = False,
                      num_classes: int | None = None) -> None:
    """Read ``path`` and load it into ``model`` (see :func:`read_checkpoint`, :func:`load_state_dict_checked`)."""
    obj = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    load_state_dict_checked(model, extract_state_dict(obj, path), path, num_classes=num_classes)


# -- pruned checkpoints (written by a run, read by ``export``/``eval``) ------------------------

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
    from dataclasses import asdict

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
    from ..pruning.space import PruningRecord, apply_record
    from .registry import SOURCES, ModelSpec, _parse_name, build_model

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
