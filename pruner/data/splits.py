"""Evaluation protocols: how a source's train/test sets become ``fit`` / ``search`` / ``report``.

* ``val-from-train``: ``search`` = ``val_size`` training images (stratified by class),
  ``fit`` = the other training images, ``report`` = the whole test set. ``val_size=None``
  picks :func:`default_val_size` (10% of train, at most 5000).
* ``test-halves``: ``fit`` = the whole training set, the test set is cut into two stratified
  halves, ``search`` (the smaller half when odd) and ``report``. For pretrained models that
  have seen every training image.

Everything is deterministic given ``seed``, and every split comes out in a seeded random order.
"""

from __future__ import annotations

import torch

from ..errors import PrunerError
from .tensors import ImageTensors

PROTOCOLS = ("val-from-train", "test-halves")
MAX_DEFAULT_VAL_SIZE = 5000


def default_val_size(num_train: int) -> int:
    """The ``val_size=None`` choice: 10% of the training images, at least 1, at most 5000."""
    return max(1, min(MAX_DEFAULT_VAL_SIZE, num_train // 10))


def check_protocol(protocol: str, val_size: int | None) -> None:
    """Reject an unknown protocol or a non-positive ``val_size`` before any loading work."""
    if protocol not in PROTOCOLS:
        raise PrunerError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if protocol == "val-from-train" and val_size is not None:
        if isinstance(val_size, bool) or not isinstance(val_size, int) or val_size < 1:
            raise PrunerError(f"val_size must be a positive integer (or None for 10% of train), got {val_size!r}")


def stratified_split(
    labels: torch.Tensor, n_first: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(len(labels))`` into ``n_first`` indices and the rest, each class in proportion.

    Class quotas are ``floor(n_first * n_c / N)`` plus one for the classes with the largest
    remainders. Both index tensors come back in a seeded random order.
    """
    n = labels.shape[0]
    perm = torch.randperm(n, generator=generator)
    shuffled = labels[perm]
    classes, counts = torch.unique(shuffled, return_counts=True)
    quota = n_first * counts // n
    remainder = n_first * counts % n
    missing = n_first - int(quota.sum())
    if missing > 0:
        order = torch.argsort(remainder, descending=True, stable=True)
        quota[order[:missing]] += 1
    take = torch.zeros(n, dtype=torch.bool)
    for cls, q in zip(classes.tolist(), quota.tolist()):
        positions = torch.nonzero(shuffled == cls).flatten()
        take[positions[:q]] = True
    return perm[take], perm[~take]


def split_protocol(
    train: ImageTensors, test: ImageTensors, protocol: str, *, val_size: int | None, seed: int
) -> tuple[ImageTensors, ImageTensors, ImageTensors]:
    """Return ``(fit, search, report)`` for ``protocol`` (see the module docstring)."""
    check_protocol(protocol, val_size)
    generator = torch.Generator().manual_seed(seed)
    if protocol == "val-from-train":
        if val_size is None:
            val_size = default_val_size(len(train))
        if val_size > len(train) - 1:
            raise PrunerError(
                f"val_size {val_size} is too large for the {len(train)} training images (at least one must "
                f"stay for fine-tuning); use a val_size of at most {len(train) - 1}, or protocol 'test-halves'"
            )
        search_idx, fit_idx = stratified_split(train.y, val_size, generator)
        report_idx = torch.randperm(len(test), generator=generator)
        return train.subset(fit_idx), train.subset(search_idx), test.subset(report_idx)
    if len(test) < 2:
        raise PrunerError(f"protocol 'test-halves' needs at least 2 test images, found {len(test)}; add test images")
    fit_idx = torch.randperm(len(train), generator=generator)
    search_idx, report_idx = stratified_split(test.y, len(test) // 2, generator)
    return train.subset(fit_idx), test.subset(search_idx), test.subset(report_idx)
