"""Fine-tuning recipes: named sets of :class:`~pruner.finetune.FinetuneConfig` settings.

``--recipe quick|standard|full`` (CLI), ``RunConfig(recipe=...)`` (API) and the New run form's
"Fine-tuning recipe" choice set the fine-tuning epochs, the schedule (a linear warm-up over a
share of the steps, then cosine decay to zero), the distillation temperature and weight and the
batch size. Settings given explicitly (a flag typed on the command line, a key of
``RunConfig(finetune={...})``, a field edited on the form) override the recipe's.

Every recipe distils from the unpruned model (weight 0.9, temperature 4: the engine's defaults)
with SGD, Nesterov momentum 0.9, weight decay 5e-4, lr 0.01 at batch 128; they differ in length
(the values are starting points chosen from common CIFAR practice, not tuned here):

* ``quick``: one epoch over all fine-tune images, no warm-up: a recovery to look at a result;
* ``standard``: 10 epochs, the first tenth warming up: the recipe of the README's evidence table;
* ``full``: 100 epochs (the length Torch-Pruning's CIFAR benchmarks fine-tune for), 2 % warm-up.
"""

from __future__ import annotations

from typing import Any

from .errors import PrunerError

_SHARED = {"lr": 0.01, "batch_size": 128, "kd_temperature": 4.0, "kd_weight": 0.9, "max_batches_per_epoch": None}

RECIPES: dict[str, dict[str, Any]] = {
    "quick": {**_SHARED, "epochs": 1, "warmup": 0.0},
    "standard": {**_SHARED, "epochs": 10, "warmup": 0.1},
    "full": {**_SHARED, "epochs": 100, "warmup": 0.02},
}

DESCRIPTIONS = {
    "quick": "1 epoch, no warm-up: a quick recovery",
    "standard": "10 epochs, 10 % warm-up then cosine",
    "full": "100 epochs, 2 % warm-up then cosine",
}


def recipe_settings(name: str) -> dict[str, Any]:
    """The :class:`~pruner.finetune.FinetuneConfig` fields recipe ``name`` sets (a copy)."""
    if not isinstance(name, str) or name not in RECIPES:
        raise PrunerError(f"unknown fine-tuning recipe {name!r} (--recipe); use one of {', '.join(RECIPES)}")
    return dict(RECIPES[name])


__all__ = ["DESCRIPTIONS", "RECIPES", "recipe_settings"]
