"""Small model definitions for building checkpoint zoos, and a name registry.

A zoo records each checkpoint's architecture as ``{"name": ..., "kwargs": {...}}`` in
JSON and rebuilds it with `build_model`; every constructor accepts JSON values
(lists where it documents sequences).

Examples:
    >>> import torch
    >>> net = build_model("convnet", channels=[8, 16], num_classes=10)
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    >>> MODEL_NAMES
    ('mlp', 'convnet', 'conv4', 'resnet', 'mobilenet_v2')
"""

from __future__ import annotations

from typing import Any

from torch import nn

from paramgen.models.convnet import Conv4, ConvNet
from paramgen.models.describe import describe_architecture
from paramgen.models.mlp import MLP
from paramgen.models.mobilenet import (
    MobileNetV2,
    imagenet_classes,
    imagenet_preprocess,
    load_mobilenet_v2_imagenet,
)
from paramgen.models.resnet import ResNet, resnet20

__all__ = [
    "MLP",
    "ConvNet",
    "Conv4",
    "ResNet",
    "resnet20",
    "MobileNetV2",
    "load_mobilenet_v2_imagenet",
    "imagenet_preprocess",
    "imagenet_classes",
    "describe_architecture",
    "build_model",
    "MODEL_NAMES",
]

MODEL_NAMES: tuple[str, ...] = ("mlp", "convnet", "conv4", "resnet", "mobilenet_v2")


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a freshly initialized model by registry name.

    Args:
        name: One of `MODEL_NAMES`: ``"mlp"`` (`MLP`), ``"convnet"``
            (`ConvNet`), ``"conv4"`` (`Conv4`), ``"resnet"`` (`ResNet`)
            or ``"mobilenet_v2"`` (`MobileNetV2`).
        **kwargs: The constructor's keyword arguments (JSON values are fine).

    Returns:
        The model, initialized from torch's global generator.

    Examples:
        >>> build_model("mlp", in_features=64, hidden=[32], num_classes=10).head.out_features
        10
    """
    builders: dict[str, type[nn.Module]] = {
        "mlp": MLP,
        "convnet": ConvNet,
        "conv4": Conv4,
        "resnet": ResNet,
        "mobilenet_v2": MobileNetV2,
    }
    if name not in builders:
        raise ValueError(f"build_model: expected one of {list(MODEL_NAMES)}, got {name!r}")
    return builders[name](**kwargs)
