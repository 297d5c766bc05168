"""Tests for the model registry in paramgen.models."""

import json

import pytest
import torch

from paramgen.models import MLP, MODEL_NAMES, Conv4, ConvNet, MobileNetV2, ResNet, build_model

CASES = [
    ("mlp", {"in_features": 64, "hidden": [32, 16], "num_classes": 10, "batchnorm": True}, MLP),
    ("convnet", {"channels": [8, 16], "dims": 1}, ConvNet),
    ("conv4", {"width": 16, "num_classes": 5}, Conv4),
    ("resnet", {"depth": 32, "widths": [8, 16, 32]}, ResNet),
    ("mobilenet_v2", {"num_classes": 10, "width_mult": 0.35}, MobileNetV2),
]


def test_names():
    assert MODEL_NAMES == ("mlp", "convnet", "conv4", "resnet", "mobilenet_v2")
    assert sorted(name for name, _, _ in CASES) == sorted(MODEL_NAMES)


@pytest.mark.parametrize("name, kwargs, cls", CASES)
def test_rebuilds_from_json(name, kwargs, cls):
    record = json.loads(json.dumps({"name": name, "kwargs": kwargs}))
    model = build_model(record["name"], **record["kwargs"])
    assert type(model) is cls
    direct = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in direct.state_dict().items()}
    # A zoo checkpoint of one build loads into another.
    model.load_state_dict(direct.state_dict(), strict=True)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"expected one of \['mlp', 'convnet', 'conv4', 'resnet', 'mobilenet_v2'\], got 'vgg'"):
        build_model("vgg")


def test_bad_kwargs_raise():
    with pytest.raises(TypeError):
        build_model("convnet", depth=3)
    with pytest.raises(ValueError):
        build_model("resnet", depth=21)
    assert build_model("convnet")(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
