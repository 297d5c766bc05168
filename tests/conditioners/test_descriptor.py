"""DescriptorConditioner: fixed vectors from layer descriptors, distinct where the layers differ."""

import pytest
import torch

from paramgen.conditioners import ConcatConditioner
from paramgen.conditioners.descriptor import DescriptorConditioner
from paramgen.conditioners.index import OneHotConditioner
from paramgen.layerwise import LayerRowLayout
from paramgen.models import ConvNet


def test_vectors_follow_the_descriptors():
    narrow, wide = (LayerRowLayout(ConvNet(channels=c), width=16) for c in ([4, 8], [6, 12]))
    cond = DescriptorConditioner()
    a, b = cond(list(narrow.descriptors)), cond(list(wide.descriptors))
    assert a.shape == (narrow.rows, cond.dim) and b.shape == (wide.rows, cond.dim)
    assert len(cond.state_dict()) == 0  # nothing trainable: a fit computes conditions once
    assert torch.unique(a, dim=0).shape[0] == narrow.rows  # every row of a member is told apart
    assert not torch.equal(a[0], b[0])  # same position, other widths
    both = ConcatConditioner(OneHotConditioner(["t1", "t2"]), cond)
    assert both([("t2", narrow.descriptors[0])]).shape == (1, 2 + cond.dim)


def test_bad_raw_conditions_raise():
    cond = DescriptorConditioner()
    with pytest.raises(TypeError, match="LayerDescriptor"):
        cond(["conv"])
    with pytest.raises(ValueError, match="bands"):
        DescriptorConditioner(bands=0)


def test_aligned_conditioner_uses_the_width_free_features():
    from paramgen.conditioners.descriptor import AlignedDescriptorConditioner
    from paramgen.layerwise import descriptor_features

    layout = LayerRowLayout(ConvNet(channels=[4, 8]), width=32, pack=False)
    cond = AlignedDescriptorConditioner(bands=3)
    out = cond(list(layout.descriptors))
    assert out.shape == (layout.rows, cond.dim) and torch.equal(out, descriptor_features(layout.descriptors, bands=3, aligned=True))
    assert cond.dim != DescriptorConditioner(bands=3).dim
    assert AlignedDescriptorConditioner.from_config(cond.config()).dim == cond.dim
