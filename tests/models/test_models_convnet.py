"""Tests for paramgen.models.convnet."""

import pytest
import torch

from paramgen.models import Conv4, ConvNet


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_convnet_default_runs_on_digits_and_fashion_mnist_sizes():
    net = ConvNet().eval()
    assert net(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    # Inputs smaller than any pooling would accept still run.
    assert net(torch.randn(2, 1, 3, 3)).shape == (2, 10)
    assert net(torch.randn(2, 1, 1, 1)).shape == (2, 10)
    # conv 1->8 (no bias) + BN, conv 8->16 (no bias) + BN, linear 16->10.
    assert n_params(net) == 8 * 9 + 16 + 16 * 8 * 9 + 32 + 16 * 10 + 10 == 1442


def test_convnet_keys():
    assert list(ConvNet().state_dict()) == [
        "blocks.0.conv.weight",
        "blocks.0.bn.weight", "blocks.0.bn.bias", "blocks.0.bn.running_mean",
        "blocks.0.bn.running_var", "blocks.0.bn.num_batches_tracked",
        "blocks.1.conv.weight",
        "blocks.1.bn.weight", "blocks.1.bn.bias", "blocks.1.bn.running_mean",
        "blocks.1.bn.running_var", "blocks.1.bn.num_batches_tracked",
        "head.weight", "head.bias",
    ]
    # Without BatchNorm the convolutions get their bias back.
    assert list(ConvNet(channels=[4], batchnorm=False).state_dict()) == [
        "blocks.0.conv.weight", "blocks.0.conv.bias", "head.weight", "head.bias",
    ]


def test_convnet_1d_for_mnist1d():
    net = ConvNet(dims=1)
    assert net(torch.randn(4, 1, 40)).shape == (4, 10)
    assert net.blocks[0].conv.weight.shape == (8, 1, 3)
    assert n_params(net) == 8 * 3 + 16 + 16 * 8 * 3 + 32 + 170


def test_convnet_pooling_rule():
    # Documented rule: max-pool by 2 after a block only while every side is >= 4.
    net = ConvNet(channels=[4, 4, 4]).eval()
    b0, b1, b2 = net.blocks
    pool = torch.nn.functional.max_pool2d
    x = torch.randn(2, 1, 8, 6)
    expected = b2(b1(pool(b0(x), 2)))  # 8x6 -> 4x3, then no pooling (a side is 3)
    torch.testing.assert_close(net.features(x), expected.mean(dim=(2, 3)))
    x = torch.randn(2, 1, 28, 28)
    expected = pool(b2(pool(b1(pool(b0(x), 2)), 2)), 2)  # 28 -> 14 -> 7 -> 3
    torch.testing.assert_close(net.features(x), expected.mean(dim=(2, 3)))


def test_convnet_bad_arguments_raise():
    with pytest.raises(ValueError, match="dims"):
        ConvNet(dims=3)
    with pytest.raises(ValueError, match="odd kernel_size"):
        ConvNet(kernel_size=4)
    with pytest.raises(ValueError, match="channels"):
        ConvNet(channels=[])
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) with C=1"):
        ConvNet()(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, C, L\)"):
        ConvNet(dims=1)(torch.randn(2, 1, 8, 8))


def test_conv4_feature_sizes():
    net = Conv4()
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 64)  # no head: features
    assert net.head is None
    rgb = Conv4(in_channels=3)
    assert rgb.features(torch.randn(1, 3, 84, 84)).shape == (1, 25 * 64)
    assert Conv4(width=32).features(torch.randn(1, 1, 16, 16)).shape == (1, 32)
    with pytest.raises(ValueError, match="H, W >= 16"):
        net.features(torch.randn(1, 1, 15, 15))


def test_conv4_param_count_matches_the_standard_backbone():
    # The usual figure for RGB inputs: 3 * 64 * 9 + 64 + 128 + 3 * (64 * 64 * 9 + 64 + 128).
    assert n_params(Conv4(in_channels=3)) == 113088
    assert n_params(Conv4()) == 111936


def test_conv4_head():
    net = Conv4(num_classes=5)
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 5)
    assert net.head.in_features == 64
    mini = Conv4(in_channels=3, num_classes=5, image_size=84)
    assert mini(torch.randn(1, 3, 84, 84)).shape == (1, 5)
    with pytest.raises(ValueError, match="head expects 64 features"):
        net(torch.randn(1, 1, 84, 84))
