"""Scanning and validating an ImageFolder tree: ``<root>/train/<class>/*`` plus ``test/`` or ``val/``."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import PrunerError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")
EVAL_SPLIT_NAMES = ("test", "val")


@dataclass
class SplitFiles:
    """The image files of one split, sorted by class then file name."""

    directory: Path
    classes: list[str]
    paths: list[str]
    labels: list[int]


@dataclass
class FolderScan:
    """A validated ImageFolder tree with a cheap fingerprint of its files."""

    root: Path
    classes: list[str]
    train: SplitFiles
    test: SplitFiles
    fingerprint: str  # hash of file count, total size, newest mtime and the file names

    @property
    def num_files(self) -> int:
        """Images in train and test together."""
        return len(self.train.paths) + len(self.test.paths)


def _class_dirs(split_dir: Path) -> list[str]:
    """Sorted names of the visible sub-folders of ``split_dir``."""
    with os.scandir(split_dir) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _scan_split(split_dir: Path, stats: list[int]) -> SplitFiles:
    """List the images of one split; ``stats`` accumulates [count, total bytes, newest mtime_ns]."""
    classes = _class_dirs(split_dir)
    if len(classes) < 2:
        raise PrunerError(
            f"{split_dir} has {len(classes)} class folder(s); an ImageFolder split needs at least two "
            f"sub-folders, one per class, each holding that class's images"
        )
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        with os.scandir(class_dir) as entries:
            images = sorted(
                (e for e in entries if e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file()),
                key=lambda e: e.name,
            )
        if not images:
            raise PrunerError(
                f"class folder {class_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                f"add images to it or remove the folder"
            )
        for entry in images:
            st = entry.stat()
            stats[0] += 1
            stats[1] += st.st_size
            stats[2] = max(stats[2], st.st_mtime_ns)
            paths.append(entry.path)
            labels.append(label)
    return SplitFiles(split_dir, classes, paths, labels)


def scan_image_folder(root: Path) -> FolderScan:
    """Validate the tree at ``root`` and list its images (no decoding).

    Raises :class:`PrunerError` for a missing folder, no ``train/``, no ``test/``/``val/``,
    fewer than two classes, an empty class folder, or test classes that differ from train's.
    """
    root = Path(root).expanduser().absolute()
    if not root.exists():
        raise PrunerError(f"dataset folder {root} does not exist; check the path or pass a dataset name")
    if not root.is_dir():
        raise PrunerError(f"{root} is a file, not a dataset folder; pass a folder holding train/ and test/")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise PrunerError(
            f"{root} has no train/ folder; an ImageFolder dataset needs train/<class>/*.jpg and test/<class>/*.jpg"
        )
    eval_dir = next((root / n for n in EVAL_SPLIT_NAMES if (root / n).is_dir()), None)
    if eval_dir is None:
        raise PrunerError(f"{root} has train/ but no test/ or val/ folder; add one with the same class folders")

    stats = [0, 0, 0]
    train = _scan_split(train_dir, stats)
    test_classes = _class_dirs(eval_dir)
    if test_classes != train.classes:
        missing = sorted(set(train.classes) - set(test_classes))
        extra = sorted(set(test_classes) - set(train.classes))
        raise PrunerError(
            f"class folders of {eval_dir} differ from {train_dir} (missing: {missing or 'none'}, "
            f"extra: {extra or 'none'}); make both splits hold the same class folders"
        )
    test = _scan_split(eval_dir, stats)
    digest = hashlib.sha256(f"{stats[0]}|{stats[1]}|{stats[2]}".encode())
    for path in train.paths + test.paths:  # names too, so moving a file between classes counts
        digest.update(path.encode("utf-8", "surrogateescape") + b"\0")
    return FolderScan(root, train.classes, train, test, digest.hexdigest()[:16])
