"""Datasets for pruning: load a spec into a :class:`DataBundle` and iterate normalized batches.

>>> data = load_data("digits", protocol="val-from-train", val_size=200)
>>> for x, y in batches(data.fit, 128, mean=data.mean, std=data.std, shuffle=True): ...

Submodules, one job each: ``tensors`` (containers), ``batching`` (batches + augmentation),
``folder`` (ImageFolder scan/validation), ``decode`` (image decoding and sizing), ``cache``
(disk + in-process cache), ``sources`` (spec -> raw train/test), ``splits`` (protocols),
``load`` (``load_data``).
"""

from __future__ import annotations

from .batching import batches, normalize, random_crop_flip
from .cache import clear_memory_cache
from .load import load_data
from .sources import IMAGENET_MEAN, IMAGENET_STD, KNOWN_SPECS, folder_cache_file
from .splits import PROTOCOLS
from .tensors import DataBundle, ImageTensors

__all__ = [
    "DataBundle",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageTensors",
    "KNOWN_SPECS",
    "PROTOCOLS",
    "batches",
    "clear_memory_cache",
    "folder_cache_file",
    "load_data",
    "normalize",
    "random_crop_flip",
]
