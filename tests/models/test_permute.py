"""Channel alignment: permutations keep the function; aligned members line up channel by channel."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paramgen.models import ConvNet
from paramgen.models.net2net import grow_convnet
from paramgen.models.permute import align_convnets, permute_convnet


@settings(max_examples=10)
@given(seed=st.integers(0, 2**16), channels=st.lists(st.integers(1, 8), min_size=1, max_size=3))
def test_permuting_keeps_the_function(seed, channels):
    torch.manual_seed(seed)
    net = ConvNet(channels=channels, num_classes=3).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    g = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(c, generator=g) for c in channels]
    out = permute_convnet(net, perms)
    x = torch.randn(4, 1, 8, 8)
    assert torch.allclose(net(x), out(x), atol=1e-5)


def test_alignment_undoes_a_permutation_and_lines_up_a_grown_member():
    torch.manual_seed(0)
    ref = ConvNet(channels=[4, 8], num_classes=3).eval()
    g = torch.Generator().manual_seed(1)
    shuffled = permute_convnet(ref, [torch.randperm(4, generator=g), torch.randperm(8, generator=g)])
    grown = grow_convnet(ref, [6, 12], noise=0.01, generator=g)  # ref's channels first, copies after
    grown = permute_convnet(grown, [torch.randperm(6, generator=g), torch.randperm(12, generator=g)])
    a_ref, a_shuffled, a_grown = align_convnets([ref, shuffled, grown])
    assert torch.equal(a_ref.blocks[0].conv.weight, a_shuffled.blocks[0].conv.weight)
    assert torch.equal(a_ref.blocks[1].conv.weight, a_shuffled.blocks[1].conv.weight)
    # The grown member's first 4 / 8 channels are the reference's channels (up to the noise on copies' inputs).
    w_ref, w_grown = a_ref.blocks[0].conv.weight, a_grown.blocks[0].conv.weight
    assert torch.allclose(w_grown[:4], w_ref, atol=0.05)
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(grown(x), a_grown(x), atol=1e-5)


def test_bad_permutations_raise():
    net = ConvNet(channels=[3])
    with pytest.raises(ValueError, match="one per block"):
        permute_convnet(net, [])
    with pytest.raises(ValueError, match="permutation"):
        permute_convnet(net, [torch.tensor([0, 0, 1])])
