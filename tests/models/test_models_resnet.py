"""Tests for paramgen.models.resnet."""

import pytest
import torch

from paramgen.models import ResNet, resnet20
from paramgen.models.resnet import BasicBlock


def expected_params(n, w=(16, 32, 64), c_in=3, classes=10):
    """Parameter count of a CIFAR ResNet with 1x1-conv+BN shortcuts, derived by hand."""
    def block(a, b):
        shortcut = a * b + 2 * b if a != b else 0
        return 9 * a * b + 9 * b * b + 4 * b + shortcut

    total = 9 * c_in * w[0] + 2 * w[0]
    prev = w[0]
    for width in w:
        total += block(prev, width) + (n - 1) * block(width, width)
        prev = width
    return total + w[-1] * classes + classes


@pytest.mark.parametrize("depth", [20, 32, 44])
def test_param_count_and_shape(depth):
    net = ResNet(depth=depth)
    n = (depth - 2) // 6
    assert [len(net.layer1), len(net.layer2), len(net.layer3)] == [n, n, n]
    assert sum(p.numel() for p in net.parameters()) == expected_params(n)
    assert net.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet20_is_about_027m():
    count = sum(p.numel() for p in resnet20().parameters())
    assert count == 272474
    assert 0.26e6 < count < 0.28e6


def test_keys():
    keys = set(resnet20(num_classes=100).state_dict())
    assert {
        "conv1.weight", "bn1.running_mean", "fc.weight", "fc.bias",
        "layer1.2.conv2.weight", "layer1.2.bn2.bias",
        "layer2.0.conv1.weight", "layer2.0.bn1.weight",
        "layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.running_var",
        "layer3.0.shortcut.0.weight", "layer3.2.conv1.weight",
    } <= keys
    # Only the first block of stages 2 and 3 changes shape.
    assert not any(k.startswith(("layer1.0.shortcut", "layer2.1.shortcut")) for k in keys)
    assert resnet20(num_classes=100).state_dict()["layer3.0.shortcut.0.weight"].shape == (64, 32, 1, 1)


def test_block_is_residual():
    block = BasicBlock(8, 8).eval()
    torch.nn.init.zeros_(block.bn2.weight)  # residual branch outputs bn2.bias == 0
    x = torch.rand(2, 8, 5, 5)  # non-negative, so relu(x) == x
    torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize("depth", [2, 19, 21, 18])
def test_depth_validation(depth):
    with pytest.raises(ValueError, match=r"6n \+ 2"):
        ResNet(depth=depth)


def test_other_validation():
    with pytest.raises(ValueError, match="three positive stage widths"):
        ResNet(widths=[16, 32])
    with pytest.raises(ValueError, match="depth is fixed"):
        resnet20(depth=32)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        resnet20()(torch.randn(1, 1, 32, 32))
    net = ResNet(in_channels=1, widths=[8, 16, 32])
    assert net(torch.randn(1, 1, 28, 28)).shape == (1, 10)
