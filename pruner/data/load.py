"""``load_data``: one call from a dataset spec to a split, normalized-ready :class:`DataBundle`."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import PrunerError
from .decode import Progress
from .sources import load_raw
from .splits import check_protocol, split_protocol
from .tensors import DataBundle

#: Resize limits (px). Decoded datasets are held in memory and grow with the square of the size
#: (CIFAR-10 at 384 px is ~26 GB), so the cap stays modest.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 512


def check_image_size(image_size: int | None) -> None:
    """``PrunerError`` unless ``image_size`` is None or an integer in [MIN_IMAGE_SIZE, MAX_IMAGE_SIZE]."""
    valid_size = isinstance(image_size, int) and not isinstance(image_size, bool)
    if image_size is not None and not (valid_size and MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE):
        raise PrunerError(
            f"image_size must be an integer from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}, got {image_size!r}; "
            f"leave it unset to keep the dataset's own size"
        )


def load_data(
    spec: str | os.PathLike[str],
    root: str | Path | None = None,
    *,
    protocol: str = "val-from-train",
    val_size: int | None = 5000,
    seed: int = 0,
    image_size: int | None = None,
    cache: bool = True,
    progress: Progress | None = None,
) -> DataBundle:
    """Load a dataset and split it by ``protocol``.

    ``spec`` is ``cifar10`` / ``cifar100`` (torchvision, under ``root or data_root()``, downloaded
    when missing), ``cifar10-jpeg`` (the ImageFolder at ``<root>/cifar10-jpeg``), ``digits``
    (scikit-learn, offline) or the path (``str`` or ``Path``) of an ImageFolder tree with ``train/`` and ``test/`` or
    ``val/``. ``image_size`` resizes to a square (default: the source's own size; for folders,
    the images' size if they are all the same square of at most 64 px, else 224). Decoded
    folders are cached on disk and in memory unless ``cache=False``. ``progress(message,
    fraction)`` is called during long work. ``val_size`` (``val-from-train`` only) must leave at
    least one training image; ``None`` means 10% of train, at most 5000. Every user-fixable
    problem is a ``PrunerError``.
    """
    check_protocol(protocol, val_size)
    check_image_size(image_size)
    raw = load_raw(spec, root, seed=seed, image_size=image_size, cache=cache, progress=progress)
    fit, search, report = split_protocol(raw.train, raw.test, protocol, val_size=val_size, seed=seed)
    c, h, w = raw.train.x.shape[1:]
    return DataBundle(
        name=raw.name,
        classes=list(raw.classes),
        mean=tuple(raw.mean),
        std=tuple(raw.std),
        input_size=(int(c), int(h), int(w)),
        protocol=protocol,
        fit=fit,
        search=search,
        report=report,
    )
