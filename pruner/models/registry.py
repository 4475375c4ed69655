"""Model specs: parse ``resnet56`` / ``torchvision:NAME`` / ``file:net.py:factory``, then build and load weights.

A :class:`ModelSpec` is the validated, JSON-serialisable description of a model; rebuilding
it with ``weights=None`` gives the bare architecture (used to replay pruning records).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ..errors import PrunerError
from ..settings import WEIGHTS_DIR_ENV, weights_dir
from ..userfile import import_function
from .cifar_googlenet import cifar_googlenet
from .cifar_mobilenetv2 import cifar_mobilenetv2
from .cifar_resnet import DEPTHS, PRETRAINED, PRETRAINED_URL, cifar_resnet
from .cifar_vgg import cifar_vgg
from .weights import (classifier_weight_key, extract_state_dict, load_state_dict_checked, load_weights_file,
                      read_checkpoint)

SOURCES = ("zoo", "torchvision", "file")
PRETRAINED_WEIGHTS = "pretrained"

#: The CIFAR zoo (32x32 inputs): name -> builder(num_classes).
ZOO: dict[str, Callable[[int], nn.Module]] = {
    **{name: (lambda n, _name=name: cifar_resnet(_name, n)) for name in DEPTHS},
    "vgg16": lambda n: cifar_vgg("vgg16", n),
    "vgg19": lambda n: cifar_vgg("vgg19", n),
    "mobilenetv2": cifar_mobilenetv2,
    "googlenet": cifar_googlenet,
}
ALIASES = {"vgg16_bn": "vgg16", "vgg19_bn": "vgg19", "mobilenet_v2": "mobilenetv2"}
#: torchvision models whose builders take ``aux_logits`` / ``init_weights``.
_AUX_MODELS = ("googlenet", "inception_v3")


@dataclass
class ModelSpec:
    """What to build: ``source`` is ``zoo``, ``torchvision`` or ``file``; ``name`` is the zoo name,
    the torchvision name or ``/abs/path.py:factory``; ``weights`` is a file path, ``"pretrained"`` or None."""

    source: str
    name: str
    num_classes: int
    weights: str | None
    trust_checkpoint: bool = False

    def to_string(self) -> str:
        """The spec string this parses back from (``resnet56``, ``torchvision:resnet18``, ``file:...``)."""
        return self.name if self.source == "zoo" else f"{self.source}:{self.name}"


def list_zoo() -> list[str]:
    """Names of the built-in CIFAR models."""
    return list(ZOO)


def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _torchvision_weights(name: str) -> Any | None:
    """torchvision's default weights enum member for ``name``, or None."""
    import torchvision

    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except Exception:
        return None


def has_pretrained(name: str) -> bool:
    """Whether public pretrained weights exist for a zoo name or ``torchvision:NAME``."""
    name = name.strip()
    if name.startswith("torchvision:"):
        tv = name.split(":", 1)[1]
        return tv in _torchvision_names() and _torchvision_weights(tv) is not None
    if name.startswith("zoo:"):
        name = name[4:]
    return ALIASES.get(name.lower(), name.lower()) in PRETRAINED


def _parse_name(spec: str) -> tuple[str, str]:
    spec = spec.strip()
    if not spec:
        raise PrunerError(f"no model given; choose one of {', '.join(ZOO)}, torchvision:NAME or file:PATH.py:FACTORY")
    prefix, sep, rest = spec.partition(":")
    if sep and prefix == "torchvision":
        names = _torchvision_names()
        if rest not in names:
            shown = ", ".join(n for n in names if n.startswith(rest[:3])) or ", ".join(names[:10]) + ", ..."
            raise PrunerError(f"unknown torchvision model {rest!r} (e.g. {shown}); see "
                              "torchvision.models.list_models(module=torchvision.models) for all classification models")
        return "torchvision", rest
    if sep and prefix == "file":
        path, sep2, factory = rest.rpartition(":")
        if not sep2 or not path or not factory.isidentifier():
            raise PrunerError(f"bad file model {spec!r}; write it as file:path/to/net.py:factory_function")
        return "file", f"{Path(path).expanduser().resolve()}:{factory}"
    name = rest if sep and prefix == "zoo" else spec
    if sep and prefix != "zoo":
        raise PrunerError(f"unknown model source {prefix!r} in {spec!r}; use a zoo name, torchvision:NAME or "
                          "file:PATH.py:FACTORY")
    key = ALIASES.get(name.lower(), name.lower())
    if key not in ZOO:
        hint = f" (did you mean torchvision:{name}?)" if name in _torchvision_names() else ""
        raise PrunerError(f"unknown zoo model {name!r}{hint}; choose one of {', '.join(ZOO)}, or use "
                          "torchvision:NAME or file:PATH.py:FACTORY")
    return "zoo", key


def parse_model_spec(spec: str, *, num_classes: int, weights: str | None = None,
                     trust_checkpoint: bool = False) -> ModelSpec:
    """Validate a spec string and weights choice into a :class:`ModelSpec` (paths made absolute)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise PrunerError(f"num_classes must be a positive integer, got {num_classes!r}")
    source, name = _parse_name(spec)
    if source == "file":
        _split_file_name(name)  # fails early on a missing file
    w = (weights or "").strip() or None
    if w is not None and w.lower() in ("none", "random"):
        w = None
    if w is not None and w.lower() == PRETRAINED_WEIGHTS:
        w = PRETRAINED_WEIGHTS
        if source == "file":
            raise PrunerError("file: models have no public pretrained weights; pass a weights file instead")
        if not has_pretrained(f"{source}:{name}" if source == "torchvision" else name):
            with_weights = ", ".join(n for n in ZOO if n in PRETRAINED)
            raise PrunerError(f"{name} has no public pretrained weights (zoo models with them: {with_weights}); "
                              "pass a weights file, or use weights=None for random init")
    elif w is not None:
        path = Path(w).expanduser()
        if not path.is_file():
            raise PrunerError(f"weights file {path} does not exist; check the path (or use weights=None for random init)")
        w = str(path.resolve())
    return ModelSpec(source, name, num_classes, w, bool(trust_checkpoint))


# -- building -----------------------------------------------------------------------------


def _split_file_name(name: str) -> tuple[Path, str]:
    path_str, _, factory = name.rpartition(":")
    path = Path(path_str)
    if not path.is_file():
        raise PrunerError(f"model file {path} does not exist; check the path in file:PATH.py:FACTORY")
    return path, factory


def _build_file(name: str, num_classes: int) -> nn.Module:
    """Import ``path.py`` and call ``factory(num_classes=...)`` (or ``factory()`` if it takes no such argument)."""
    path, factory_name = _split_file_name(name)
    factory = import_function(path, factory_name, what="model file", syntax="file:PATH.py:FACTORY")
    try:
        params = inspect.signature(factory).parameters
        takes_classes = "num_classes" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        takes_classes = False
    try:
        model = factory(num_classes=num_classes) if takes_classes else factory()
    except Exception as exc:
        raise PrunerError(f"{factory_name}() in {path} raised {type(exc).__name__}: {exc}; fix the factory") from None
    if not isinstance(model, nn.Module):
        raise PrunerError(f"{factory_name}() in {path} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _drop_aux(model: nn.Module) -> None:
    """Remove GoogLeNet / Inception-v3 auxiliary classifiers (torchvision does the same for aux_logits=False)."""
    if hasattr(model, "aux_logits"):
        model.aux_logits = False
    for attr in ("aux1", "aux2", "AuxLogits"):
        if hasattr(model, attr):
            setattr(model, attr, None)


def _replace_classifier(model: nn.Module, num_classes: int) -> None:
    """Swap the final classifier (last Linear, or SqueezeNet's last 1x1 conv) for a fresh ``num_classes`` one."""
    key = classifier_weight_key(model)
    if key is None:
        raise PrunerError("could not find the final classifier to replace; build with num_classes=1000")
    path = key.rsplit(".", 1)[0]
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding,
                        bias=old.bias is not None)
    setattr(parent, attr, new)
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes


def _local_weights(file_name: str) -> Path | None:
    """``file_name`` in PRUNER_WEIGHTS_DIR or torch.hub's cache, where a pretrained load looks first."""
    for folder in (weights_dir(), Path(torch.hub.get_dir()) / "checkpoints"):
        if (folder / file_name).is_file():
            return folder / file_name
    return None


def pretrained_file(name: str) -> tuple[str, bool] | None:
    """For a zoo name or ``torchvision:NAME`` with public weights: their file name and whether it is on
    this machine already (else a pretrained run downloads it, which fails offline); None without weights."""
    if not has_pretrained(name):
        return None
    name = name.strip()
    if name.startswith("torchvision:"):
        file_name = Path(_torchvision_weights(name.split(":", 1)[1]).url).name
    else:
        file_name = PRETRAINED[ALIASES.get(name.removeprefix("zoo:").lower(), name.removeprefix("zoo:").lower())]
    return file_name, _local_weights(file_name) is not None


def _pretrained_state(file_name: str, url: str, what: str) -> dict[str, torch.Tensor]:
    """Read ``file_name`` from PRUNER_WEIGHTS_DIR (or torch.hub's cache), else download it there."""
    wdir = weights_dir()
    local = _local_weights(file_name)
    if local is not None:
        return extract_state_dict(read_checkpoint(local), local)
    try:
        obj = torch.hub.load_state_dict_from_url(url, model_dir=str(wdir), map_location="cpu", progress=False,
                                                 weights_only=True)
    except Exception as exc:
        raise PrunerError(f"pretrained weights for {what} ({file_name}) are not in {wdir} and could not be downloaded "
                          f"({type(exc).__name__}: {exc}); put {file_name} in the folder named by {WEIGHTS_DIR_ENV}, "
                          "or pass a weights file") from None
    return extract_state_dict(obj, url)


def _build_torchvision(name: str, num_classes: int, pretrained: bool) -> nn.Module:
    """A ``torchvision.models`` classifier.

    With pretrained weights the model is built for ImageNet (1000 classes), the weights are
    loaded, and when ``num_classes != 1000`` the final classifier is then replaced by a new,
    randomly initialised one (transfer learning: it needs fine-tuning). GoogLeNet / Inception-v3
    are built with their auxiliary classifiers (as the weights expect) and those are dropped.
    """
    import torchvision

    extra: dict[str, Any] = {}
    if not pretrained:
        if name in _AUX_MODELS:
            extra = {"aux_logits": False, "init_weights": True}
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)
    weights = _torchvision_weights(name)
    if weights is None:
        raise PrunerError(f"torchvision:{name} has no pretrained weights; pass a weights file or use weights=None")
    if name in _AUX_MODELS:
        extra = {"aux_logits": True, "init_weights": False, "transform_input": True}
    n_imagenet = len(weights.meta.get("categories") or range(1000))
    model = torchvision.models.get_model(name, weights=None, num_classes=n_imagenet, **extra)
    file_name = Path(weights.url).name
    load_state_dict_checked(model, _pretrained_state(file_name, weights.url, f"torchvision:{name}"), file_name)
    _drop_aux(model)
    if num_classes != n_imagenet:
        _replace_classifier(model, num_classes)
    return model


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the architecture of ``spec`` and load its weights; returns the model in eval mode on CPU."""
    if spec.source not in SOURCES:
        raise PrunerError(f"unknown model source {spec.source!r}; expected one of {', '.join(SOURCES)}")
    pretrained = spec.weights == PRETRAINED_WEIGHTS
    if spec.source == "zoo":
        if spec.name not in ZOO:
            raise PrunerError(f"unknown zoo model {spec.name!r}; choose one of {', '.join(ZOO)}")
        model = ZOO[spec.name](spec.num_classes)
        if pretrained:
            if spec.name not in PRETRAINED:
                raise PrunerError(f"{spec.name} has no public pretrained weights; pass a weights file or use weights=None")
            file_name = PRETRAINED[spec.name]
            state = _pretrained_state(file_name, PRETRAINED_URL.format(file_name), spec.name)
            load_state_dict_checked(model, state, file_name, num_classes=spec.num_classes)
    elif spec.source == "torchvision":
        model = _build_torchvision(spec.name, spec.num_classes, pretrained)
    else:
        if pretrained:
            raise PrunerError("file: models have no public pretrained weights; pass a weights file instead")
        model = _build_file(spec.name, spec.num_classes)
    if spec.weights is not None and not pretrained:
        load_weights_file(model, spec.weights, trust_checkpoint=spec.trust_checkpoint, num_classes=spec.num_classes)
    return model.cpu().eval()


def load_model(spec: str, *, num_classes: int = 10, weights: str | None = None,
               trust_checkpoint: bool = False) -> tuple[nn.Module, ModelSpec]:
    """Parse ``spec`` and build it: ``(model in eval mode on CPU, ModelSpec)``."""
    parsed = parse_model_spec(spec, num_classes=num_classes, weights=weights, trust_checkpoint=trust_checkpoint)
    return build_model(parsed), parsed
