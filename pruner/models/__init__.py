"""Models: the CIFAR zoo, ``torchvision:`` and ``file:`` models, and checked weight loading.

>>> model, spec = load_model("resnet56", num_classes=10, weights="pretrained")  # doctest: +SKIP
"""

from .registry import ModelSpec, build_model, has_pretrained, list_zoo, load_model, parse_model_spec, pretrained_file

__all__ = ["ModelSpec", "build_model", "has_pretrained", "list_zoo", "load_model", "parse_model_spec",
           "pretrained_file"]
