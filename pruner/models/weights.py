"""Reading weight files safely and loading them into a model with clear errors.

Files are read with ``torch.load(weights_only=True)``: tensors and plain containers only.
A whole pickled ``nn.Module`` (or any other pickled Python object) needs
``trust_checkpoint=True`` because unpickling can run arbitrary code.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

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
