"""Dataset sources: turn a spec (``cifar10``, ``cifar100``, ``cifar10-jpeg``, ``digits`` or a
folder path) into raw train/test :class:`ImageTensors` with class names and normalization."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import PrunerError
from ..settings import DATA_ROOT_ENV, data_root
from . import cache as cache_mod
from .decode import (
    LARGE_DEFAULT_SIZE,
    Progress,
    SizeMismatch,
    auto_size,
    decode_image_file,
    decode_images,
    resize_batch,
)
from .folder import FolderScan, scan_image_folder
from .tensors import ImageTensors

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DIGITS_MEAN = (0.5, 0.5, 0.5)
DIGITS_STD = (0.5, 0.5, 0.5)

TORCHVISION_CIFAR = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", "cifar-100-python"),
}
KNOWN_SPECS = ("cifar10", "cifar100", "cifar10-jpeg", "digits")


@dataclass
class RawData:
    """A dataset before splitting: the source's own train and test sets."""

    name: str
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: ImageTensors
    test: ImageTensors


def _entry_to_raw(name: str, entry: dict[str, Any], mean: tuple[float, ...], std: tuple[float, ...]) -> RawData:
    return RawData(
        name,
        list(entry["classes"]),
        mean,
        std,
        ImageTensors(entry["train_x"], entry["train_y"]),
        ImageTensors(entry["test_x"], entry["test_y"]),
    )


def _resized(entry: dict[str, Any], image_size: int | None) -> dict[str, Any]:
    """``entry`` with both splits brought to ``image_size`` (unchanged when ``None``)."""
    if image_size is None:
        return entry
    train_x, test_x = resize_batch(entry["train_x"], image_size), resize_batch(entry["test_x"], image_size)
    return {**entry, "train_x": train_x, "test_x": test_x}


# --- ImageFolder trees ---------------------------------------------------------------------------


def _decode_folder(scan: FolderScan, image_size: int | None, progress: Progress | None) -> dict[str, Any]:
    """Decode both splits of a scanned tree; ``image_size=None`` follows :func:`decode.auto_size`."""
    if image_size is not None:
        return _decode_splits(scan, image_size, exact=False, progress=progress)
    size, exact = auto_size(decode_image_file(scan.train.paths[0]))
    if exact:
        try:
            return _decode_splits(scan, size, exact=True, progress=progress)
        except SizeMismatch:  # not all the same small square size: use the large default for all
            size = LARGE_DEFAULT_SIZE
    return _decode_splits(scan, size, exact=False, progress=progress)


def _decode_splits(scan: FolderScan, size: int, *, exact: bool, progress: Progress | None) -> dict[str, Any]:
    train_x = decode_images(scan.train.paths, size, exact=exact, progress=progress, label="decoding train images")
    test_x = decode_images(scan.test.paths, size, exact=exact, progress=progress, label="decoding test images")
    return _folder_entry(scan, train_x, test_x)


def _folder_entry(scan: FolderScan, train_x: torch.Tensor, test_x: torch.Tensor) -> dict[str, Any]:
    return {
        "classes": list(scan.classes),
        "train_x": train_x,
        "train_y": torch.tensor(scan.train.labels, dtype=torch.int64),
        "test_x": test_x,
        "test_y": torch.tensor(scan.test.labels, dtype=torch.int64),
    }


def _entry_matches(entry: dict[str, Any], scan: FolderScan) -> bool:
    """A cached entry is usable only if it has the scanned classes and image counts."""
    try:
        return (
            list(entry["classes"]) == scan.classes
            and entry["train_x"].shape[0] == entry["train_y"].shape[0] == len(scan.train.paths)
            and entry["test_x"].shape[0] == entry["test_y"].shape[0] == len(scan.test.paths)
            and entry["train_x"].dtype == torch.uint8
        )
    except (KeyError, AttributeError, TypeError):
        return False


def folder_cache_file(path: str | Path, image_size: int | None = None) -> Path:
    """The disk-cache file :func:`load_image_folder` uses for ``path`` (it may not exist yet)."""
    scan = scan_image_folder(Path(path))
    return cache_mod.cache_path(scan.root.name, _folder_key(scan, image_size))


def _folder_key(scan: FolderScan, image_size: int | None) -> str:
    return cache_mod.cache_key("imagefolder", scan.root, image_size or "auto", scan.fingerprint)


def load_image_folder(
    path: Path, *, name: str | None = None, image_size: int | None, cache: bool, progress: Progress | None
) -> RawData:
    """Load an ImageFolder tree, through the in-process and disk caches unless ``cache=False``."""
    scan = scan_image_folder(path)
    name = name or scan.root.name
    key = _folder_key(scan, image_size)
    disk_file = cache_mod.cache_path(scan.root.name, key)
    entry = cache_mod.memory_get(key) if cache else None
    if entry is None and cache:
        if progress is not None:
            progress("reading decoded-image cache", 0.0)
        entry = cache_mod.disk_get(disk_file)
        if entry is not None and not _entry_matches(entry, scan):
            entry = None
        if entry is not None:
            cache_mod.memory_put(key, entry)
    if entry is None:
        entry = _decode_folder(scan, image_size, progress)
        if cache:
            if progress is not None:
                progress("writing decoded-image cache", 1.0)
            cache_mod.disk_put(disk_file, entry)
            cache_mod.memory_put(key, entry)
    return _entry_to_raw(name, entry, IMAGENET_MEAN, IMAGENET_STD)


# --- torchvision CIFAR ---------------------------------------------------------------------------


def _open_cifar(cls: Any, root: Path, download: bool) -> tuple[Any, Any]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return cls(str(root), train=True, download=download), cls(str(root), train=False, download=download)


def load_torchvision_cifar(name: str, root: Path, *, image_size: int | None, cache: bool) -> RawData:
    """CIFAR-10/100 through torchvision under ``root`` (downloaded there when missing)."""
    import torchvision.datasets as tvd

    class_name, folder = TORCHVISION_CIFAR[name]
    root = root.expanduser().absolute()
    key = cache_mod.cache_key("torchvision", name, root, image_size or "native")
    entry = cache_mod.memory_get(key) if cache else None
    if entry is None:
        cls = getattr(tvd, class_name)
        try:
            train, test = _open_cifar(cls, root, download=False)
        except RuntimeError:  # "Dataset not found or corrupted"
            try:
                train, test = _open_cifar(cls, root, download=True)
            except Exception as e:
                raise PrunerError(
                    f"{name} is not under {root / folder} and downloading it failed ({type(e).__name__}: {e}); "
                    f"connect to the internet once, copy the extracted '{folder}' folder into {root}, "
                    f"or set {DATA_ROOT_ENV} (or root=) to a folder that has it"
                ) from e

        def to_tensors(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            return x, torch.tensor(ds.targets, dtype=torch.int64)

        (train_x, train_y), (test_x, test_y) = to_tensors(train), to_tensors(test)
        entry = {"classes": list(train.classes), "train_x": train_x, "train_y": train_y}
        entry = _resized({**entry, "test_x": test_x, "test_y": test_y}, image_size)
        if cache:
            cache_mod.memory_put(key, entry)
    return _entry_to_raw(name, entry, IMAGENET_MEAN, IMAGENET_STD)


# --- scikit-learn digits -------------------------------------------------------------------------


def load_digits_data(*, seed: int, image_size: int | None) -> RawData:
    """scikit-learn's 8x8 digits as 3x32x32 uint8 (gray replicated, bilinear upscale), 80/20 stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    gray = torch.from_numpy(digits.images).float().mul_(255.0 / 16.0)[:, None]  # [N, 1, 8, 8], 0..255
    x = F.interpolate(gray, size=(32, 32), mode="bilinear", align_corners=False)
    x = x.round_().clamp_(0, 255).to(torch.uint8).repeat(1, 3, 1, 1)
    y = torch.from_numpy(digits.target).long()
    train_idx, test_idx = train_test_split(
        torch.arange(len(y)).numpy(), test_size=0.2, stratify=digits.target, random_state=seed
    )
    train_i, test_i = torch.from_numpy(train_idx).sort().values, torch.from_numpy(test_idx).sort().values
    entry = {"classes": [str(i) for i in range(10)], "train_x": x[train_i], "train_y": y[train_i]}
    entry = _resized({**entry, "test_x": x[test_i], "test_y": y[test_i]}, image_size)
    return _entry_to_raw("digits", entry, DIGITS_MEAN, DIGITS_STD)


# --- dispatch ------------------------------------------------------------------------------------


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or "/" in spec or spec.startswith((".", "~"))


def check_data_spec(spec: str | os.PathLike[str], root: str | Path | None) -> None:
    """What :func:`load_raw` would refuse before reading a file: no dataset, an unknown name, a
    missing folder (so a run is refused before its run directory exists). Decoding errors come later."""
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise PrunerError(f"no dataset given; pass one of {', '.join(KNOWN_SPECS)} or an ImageFolder path")
    name = spec.strip().lower()
    if name in TORCHVISION_CIFAR or name == "digits":
        return
    if name == "cifar10-jpeg":
        folder = (Path(root).expanduser() if root is not None else data_root()) / "cifar10-jpeg"
        if not folder.is_dir():
            raise PrunerError(f"cifar10-jpeg not found at {folder.absolute()}; set {DATA_ROOT_ENV} (or root=) to the "
                              "folder that contains cifar10-jpeg/")
        return
    path = Path(spec.strip()).expanduser()
    if path.exists():
        return
    if _looks_like_path(spec):
        raise PrunerError(f"dataset folder {path} does not exist; pass the path of an ImageFolder tree with train/ "
                          f"and test/, or one of {', '.join(KNOWN_SPECS)}")
    raise PrunerError(
        f"unknown dataset {spec!r} (and no folder of that name exists); use one of {', '.join(KNOWN_SPECS)} "
        f"or the path of an ImageFolder tree with train/ and test/"
    )


def load_raw(
    spec: str | os.PathLike[str],
    root: str | Path | None,
    *,
    seed: int,
    image_size: int | None,
    cache: bool,
    progress: Progress | None,
) -> RawData:
    """Resolve ``spec`` and load the source's train and test sets (see :func:`pruner.data.load_data`)."""
    if isinstance(spec, os.PathLike):
        return load_image_folder(Path(spec).expanduser(), image_size=image_size, cache=cache, progress=progress)
    if not isinstance(spec, str) or not spec.strip():
        raise PrunerError(f"no dataset given; pass one of {', '.join(KNOWN_SPECS)} or an ImageFolder path")
    name = spec.strip().lower()
    base = Path(root).expanduser() if root is not None else data_root()
    if name in TORCHVISION_CIFAR:
        return load_torchvision_cifar(name, base, image_size=image_size, cache=cache)
    if name == "cifar10-jpeg":
        folder = base / "cifar10-jpeg"
        if not folder.is_dir():
            raise PrunerError(
                f"cifar10-jpeg not found at {folder.absolute()}; set {DATA_ROOT_ENV} (or root=) to the folder "
                f"that contains cifar10-jpeg/"
            )
        return load_image_folder(folder, name="cifar10-jpeg", image_size=image_size, cache=cache, progress=progress)
    if name == "digits":
        return load_digits_data(seed=seed, image_size=image_size)
    path = Path(spec.strip()).expanduser()
    if path.exists() or _looks_like_path(spec):
        return load_image_folder(path, image_size=image_size, cache=cache, progress=progress)
    raise PrunerError(
        f"unknown dataset {spec!r} (and no folder of that name exists); use one of {', '.join(KNOWN_SPECS)} "
        f"or the path of an ImageFolder tree with train/ and test/"
    )
