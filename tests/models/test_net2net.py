"""Net2Net growth is function-preserving; BatchNorm recalibration re-estimates statistics."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paramgen.models import ConvNet, ResNet
from paramgen.models.batchnorm import recalibrate_batchnorm
from paramgen.models.net2net import can_grow, grow_convnet, grow_resnet, widen_map


def _randomize_bn(net):
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_()
            m.running_var.uniform_(0.2, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0.0, 0.3)


@settings(max_examples=12)
@given(
    seed=st.integers(0, 2**16),
    source=st.lists(st.integers(1, 8), min_size=1, max_size=2),
    widen=st.lists(st.integers(0, 4), min_size=2, max_size=2),
    extra=st.integers(0, 2),
    batchnorm=st.booleans(),
)
def test_grown_convnet_computes_the_same_function(seed, source, widen, extra, batchnorm):
    torch.manual_seed(seed)
    net = ConvNet(channels=source, num_classes=4, batchnorm=batchnorm)
    _randomize_bn(net)
    wider = [c + w for c, w in zip(source, widen, strict=False)]
    target = wider + [wider[-1] + widen[-1]] * extra
    assert can_grow(source, target)
    big = grow_convnet(net, target, generator=torch.Generator().manual_seed(seed))
    assert list(big.channels) == target
    x = torch.randn(6, 1, 8, 8)  # 8x8 digits: extra blocks after two see 2x2 maps and do not pool
    if extra and len(source) == 1:
        x = torch.randn(6, 1, 2, 2)  # a single block would leave 4x4 maps: the extra block would pool
    assert torch.allclose(net.eval()(x), big(x), atol=1e-4, rtol=1e-4)


@settings(max_examples=8)
@given(
    seed=st.integers(0, 2**16),
    depth=st.sampled_from([8, 14]),
    extra=st.sampled_from([0, 6, 12]),
    widths=st.lists(st.integers(1, 5), min_size=3, max_size=3),
    widen=st.lists(st.integers(0, 3), min_size=3, max_size=3),
)
def test_grown_resnet_computes_the_same_function(seed, depth, extra, widths, widen):
    torch.manual_seed(seed)
    net = ResNet(depth=depth, widths=widths, in_channels=1, num_classes=3)
    _randomize_bn(net)
    big = grow_resnet(net, depth=depth + extra, widths=[w + d for w, d in zip(widths, widen, strict=True)], generator=torch.Generator().manual_seed(seed))
    x = torch.randn(4, 1, 12, 12)
    assert torch.allclose(net.eval()(x), big(x), atol=1e-4, rtol=1e-4)
    # Zero-initialized extra blocks add nothing whatever their statistics: the source and the
    # deepened net, both recalibrated on the same batches, still agree.
    if extra and widen == [0, 0, 0]:
        batches = [torch.randn(16, 1, 12, 12) for _ in range(3)]
        recalibrate_batchnorm(net, batches)
        recalibrate_batchnorm(big, batches)
        assert torch.allclose(net(x), big(x), atol=1e-4, rtol=1e-4)


def test_noise_breaks_symmetry_and_wrong_targets_raise():
    torch.manual_seed(0)
    net = ConvNet(channels=[4, 8], num_classes=3).eval()
    g = torch.Generator().manual_seed(1)
    big = grow_convnet(net, [8, 8], noise=0.1, generator=g)
    x = torch.randn(5, 1, 8, 8)
    assert not torch.allclose(net(x), big(x), atol=1e-4)
    with pytest.raises(ValueError, match="cannot grow"):
        grow_convnet(net, [2, 8])
    with pytest.raises(ValueError, match="cannot grow"):
        grow_convnet(net, [4, 8, 4])
    with pytest.raises(ValueError, match="cannot grow"):
        grow_resnet(ResNet(depth=14, widths=(2, 2, 2), in_channels=1), depth=8, widths=(2, 2, 2))
    assert widen_map(3, 3).tolist() == [0, 1, 2]
    with pytest.raises(ValueError):
        widen_map(3, 2)


def test_recalibration_matches_the_statistics_of_the_batches():
    torch.manual_seed(0)
    net = ConvNet(channels=[3], num_classes=2)
    net.train()
    bn = net.blocks[0].bn
    batches = [torch.randn(32, 1, 6, 6) * 2 + 1 for _ in range(4)]
    recalibrate_batchnorm(net, batches)
    assert net.training and bn.momentum == 0.1  # flags and momentum restored
    with torch.no_grad():
        pre = torch.cat([net.blocks[0].conv(b) for b in batches])  # (B, C, H, W)
    per_batch_mean = torch.stack([net.blocks[0].conv(b).mean((0, 2, 3)) for b in batches]).mean(0)
    assert torch.allclose(bn.running_mean, per_batch_mean.detach(), atol=1e-5)
    assert torch.allclose(bn.running_var, pre.var((0, 2, 3)), rtol=0.05)
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_batchnorm(net, [])
    with pytest.raises(ValueError, match="no BatchNorm"):
        recalibrate_batchnorm(torch.nn.Linear(2, 2), [torch.zeros(1, 2)])
