"""Tests for paramgen.models.describe."""

import pytest

from paramgen.models import MLP, Conv4, ConvNet, MobileNetV2, ResNet, describe_architecture


def test_identical_architectures_give_identical_descriptions():
    # Different random weights, same architecture.
    assert describe_architecture(ResNet(depth=20)) == describe_architecture(ResNet(depth=20))
    assert describe_architecture(ConvNet()) == describe_architecture(ConvNet())


@pytest.mark.parametrize(
    "a, b",
    [
        (ResNet(depth=20), ResNet(depth=32)),
        (ResNet(depth=20), ResNet(depth=20, widths=[32, 64, 128])),
        (ResNet(depth=20), ResNet(depth=20, num_classes=100)),
        (ConvNet(), ConvNet(channels=[16, 32])),
        (ConvNet(), ConvNet(channels=[8, 16, 16])),
        (ConvNet(), ConvNet(dims=1)),
        (ConvNet(), ConvNet(in_channels=3)),
        (ConvNet(), ConvNet(kernel_size=5)),
        (ConvNet(), ConvNet(batchnorm=False)),
        (MLP(64, [32], 10), MLP(64, [32, 32], 10)),
        (MLP(64, [32], 10), MLP(64, [48], 10)),
        (Conv4(), Conv4(width=32)),
        (MobileNetV2(), MobileNetV2(width_mult=0.5)),
    ],
)
def test_different_architectures_differ(a, b):
    assert describe_architecture(a) != describe_architecture(b)


def test_content_and_length():
    text = describe_architecture(ResNet(depth=20))
    assert text.startswith("resnet: in 3; blocks [3, 3, 3]; conv3x3 16 x7, conv3x3/2 32")
    assert "linear 10" in text and "batchnorm" in text and text.endswith("params 272474")
    assert describe_architecture(ConvNet()) == (
        "convnet: in 1; blocks [2]; conv3x3 8, conv3x3 16, linear 10; batchnorm; params 1442"
    )
    small = [ResNet(depth=110), ConvNet(), Conv4(), MLP(64, [32] * 6, 10), MobileNetV2()]
    for model in small:
        assert len(describe_architecture(model)) < 300


def test_long_layer_lists_are_summarized():
    text = describe_architecture(MobileNetV2())
    assert "53 layers: conv3x3 x1, conv3x3dw x17, conv1x1 x34, linear x1" in text
    assert "widths [32, 16, 96, 24," in text and "1280, 1000]" in text
    assert "dropout 0.2" in text
    # With a generous budget every run is listed instead.
    assert "conv3x3dw/2 96" in describe_architecture(MobileNetV2(), max_layers=100)
