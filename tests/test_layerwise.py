"""paramgen.layerwise: channel-aligned rows with descriptors; exact round trips over families."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paramgen.layerwise import KINDS, LayerRowLayout, denormalize_rows, descriptor_features, normalize_rows
from paramgen.models import ConvNet, ResNet

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@st.composite
def members(draw):
    """A random ConvNet or ResNet of the benchmark's families, with non-trivial BN statistics."""
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    if draw(st.booleans()):
        channels = draw(st.lists(st.integers(1, 12), min_size=1, max_size=4))
        net = ConvNet(channels=channels, num_classes=draw(st.integers(2, 6)), kernel_size=draw(st.sampled_from([1, 3, 5])), batchnorm=draw(st.booleans()))
    else:
        widths = draw(st.lists(st.integers(1, 6), min_size=3, max_size=3))
        net = ResNet(depth=draw(st.sampled_from([8, 14])), widths=widths, in_channels=1, num_classes=draw(st.integers(2, 6)))
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.1, 3.0)
            m.num_batches_tracked.fill_(draw(st.integers(0, 1000)))
    return net


@settings(max_examples=15)
@given(net=members(), width=st.integers(1, 40), dtype=st.sampled_from(DTYPES), pack=st.booleans())
def test_round_trip_is_bit_exact_in_any_float_dtype(net, width, dtype, pack):
    sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in net.state_dict().items()}
    layout = LayerRowLayout(net, width=width, pack=pack)
    rows = layout.flatten(sd)
    assert rows.values.dtype == dtype and rows.values.shape == (layout.rows, width)
    back = layout.unflatten(rows.values, extras=rows.extras)
    assert list(back) == list(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    # Every weight appears exactly once, padding is zero.
    assert int(layout.mask.sum()) == layout.numel == sum(v.numel() for v in sd.values() if v.is_floating_point())
    assert torch.all(rows.values[~layout.mask] == 0)


@settings(max_examples=15)
@given(net=members(), width=st.integers(1, 40), pack=st.booleans())
def test_rows_are_channel_aligned_and_descriptors_match(net, width, pack):
    layout = LayerRowLayout(net, width=width, pack=pack)
    sd = net.state_dict()
    rows = layout.flatten(sd)
    for i, d in enumerate(layout.descriptors):
        t = sd[d.name].reshape(d.out_channels, -1)  # (out, r)
        r = t.shape[1]
        n = int(layout.mask[i].sum())
        got = rows.values[i, :n]
        if d.pieces == 1:
            assert torch.equal(got, t[d.channel : d.channel + d.channels].reshape(-1))  # whole channels, in order
        else:
            assert d.channels == 1 and torch.equal(got, t[d.channel, d.piece * width : (d.piece + 1) * width])
        assert d.kind in KINDS and 0.0 <= d.depth <= 1.0 and d.rows == sum(e.name == d.name for e in layout.descriptors)
        assert d.pieces == (1 if r <= width else math.ceil(r / width))
        if not pack and r > 1:
            assert d.channels == 1  # one channel per row: entry j is the same input position at any width
    # Rows per layer grow with the layer's size (tokens in proportion to layer size).
    for name in layout.names:
        n_rows = sum(d.name == name for d in layout.descriptors)
        assert n_rows >= math.ceil(sd[name].numel() / width)


def test_descriptors_of_a_resnet():
    net = ResNet(depth=8, widths=(4, 8, 16), in_channels=1, num_classes=5)
    layout = LayerRowLayout(net, width=32)
    by_name = {d.name: d for d in layout.descriptors}
    sc = by_name["layer2.0.shortcut.0.weight"]
    assert (sc.kind, sc.in_channels, sc.out_channels, sc.kernel) == ("conv", 4, 8, 1)
    assert by_name["layer2.0.shortcut.1.running_var"].kind == "bn_var"
    assert by_name["layer2.0.shortcut.1.running_var"].depth == sc.depth  # BN takes its conv's depth
    assert by_name["conv1.weight"].depth == 0.0 and by_name["fc.weight"].depth == 1.0
    assert by_name["fc.bias"].kind == "bias" and by_name["fc.bias"].in_channels == 16
    assert all(d.arch.startswith("resnet:") for d in layout.descriptors)
    f = descriptor_features(layout.descriptors)
    assert f.shape[0] == layout.rows and torch.isfinite(f).all()
    # Rows that differ only in position get different features.
    a, b = (i for i, d in enumerate(layout.descriptors) if d.name == "conv1.weight" and d.index in (0, 1))
    assert not torch.equal(f[a], f[b])


def test_normalize_rows_inverts_and_puts_widths_on_one_scale():
    torch.manual_seed(0)
    small, wide = ConvNet(channels=[8, 16]), ConvNet(channels=[8, 64])
    for net in (small, wide):
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    scales = []
    for net in (small, wide):
        layout = LayerRowLayout(net, width=32)
        rows = layout.flatten(net.state_dict()).values.double()
        z = normalize_rows(rows, layout.descriptors, layout.mask)
        assert torch.allclose(denormalize_rows(z, layout.descriptors, layout.mask), rows, rtol=1e-12, atol=1e-12)
        head = [i for i, d in enumerate(layout.descriptors) if d.name == "head.weight"]
        scales.append(float(z[head][layout.mask[head]].std()))
    assert 0.7 < scales[0] / scales[1] < 1.4  # kaiming-uniform heads of fan-in 16 and 64, same scale after


def test_bad_input_raises():
    net = ConvNet(channels=[4])
    with pytest.raises(ValueError, match="width"):
        LayerRowLayout(net, width=0)
    layout = LayerRowLayout(net, width=8)
    with pytest.raises(ValueError, match="lacks"):
        layout.flatten({})
    with pytest.raises(ValueError, match="shape"):
        layout.unflatten(torch.zeros(layout.rows + 1, 8))
    with pytest.raises(ValueError, match="expected conv, linear or BatchNorm"):
        LayerRowLayout(torch.nn.Sequential(torch.nn.LayerNorm(4)), width=8)


def test_unpacked_rows_and_aligned_features_line_up_across_widths():
    """pack=False, aligned features: a row of a narrow member and the row of the same channel and
    piece of a wider one hold the same input positions and differ only in the channel counts."""
    narrow, wide = ConvNet(channels=[4, 8], num_classes=5), ConvNet(channels=[6, 12], num_classes=5)
    ln, lw = LayerRowLayout(narrow, width=32, pack=False), LayerRowLayout(wide, width=32, pack=False)
    fn, fw = descriptor_features(ln.descriptors, aligned=True), descriptor_features(lw.descriptors, aligned=True)
    assert fn.shape[1] == fw.shape[1] and torch.isfinite(fn).all()
    where = {(d.name, d.channel, d.piece): i for i, d in enumerate(lw.descriptors)}
    sizes = slice(len(KINDS), len(KINDS) + 2)  # log2 in / out channels
    keep = torch.ones(fn.shape[1], dtype=torch.bool)
    keep[sizes] = False
    for i, d in enumerate(ln.descriptors):
        j = where[(d.name, d.channel, d.piece)]
        assert torch.equal(fn[i, keep], fw[j, keep]), d.name
    head_n = [d for d in ln.descriptors if d.name == "head.weight"]
    assert [d.channel for d in head_n] == [0, 1, 2, 3, 4]  # one class per row at any width (packed: 32 // 8 = 4 per row)
    # Rows of different channels get different features.
    assert len({tuple(r.tolist()) for r in fn}) == ln.rows
