"""`ParamSpec.canonical`: the same tensors in any order give one layout, and fingerprints that
existing zoos and generators recorded stay what they were."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paramgen.lora import LoRASetup
from paramgen.spec import ParamSpec, SpecMismatchError


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(1, 3), min_size=1, max_size=2), min_size=1, max_size=6),
    buffer=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_any_order_of_a_state_dict_has_one_canonical_layout(shapes, buffer, seed):
    g = torch.Generator().manual_seed(seed)
    sd = {f"layer.{i * 7 % 12}.{'weight' if i % 2 else 'bias'}": torch.randn(*s, generator=g) for i, s in enumerate(shapes)}
    if buffer:
        sd["layer.0.num_batches_tracked"] = torch.tensor(3)
    items = list(sd.items())
    random.Random(seed).shuffle(items)
    a, b = ParamSpec.from_state_dict(sd).canonical(), ParamSpec.from_state_dict(dict(items)).canonical()
    assert a.fingerprint == b.fingerprint and a.canonical().fingerprint == a.fingerprint  # order-free, and idempotent
    assert [t.offset for t in a.tensors] == [t.offset for t in b.tensors]
    flat, extras = a.flatten([sd])
    back = a.unflatten(flat, extras=extras)[0]
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)  # an exact round trip


def test_canonical_order_is_pytorch_s_within_a_module_and_numeric_across():
    sd = {name: torch.zeros(2) for name in ("layer.10.weight", "bn.running_var", "layer.2.bias", "bn.num_batches_tracked", "bn.bias",
                                           "layer.2.weight", "bn.running_mean", "bn.weight")}  # fmt: skip
    sd["bn.num_batches_tracked"] = torch.tensor(0)
    spec = ParamSpec.from_state_dict(sd).canonical()
    assert spec.names == ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked", "layer.2.weight", "layer.2.bias", "layer.10.weight")
    assert spec.layers == ("bn", "layer.2", "layer.10") and [t.layer for t in spec.tensors] == [0, 0, 0, 0, 0, 1, 1, 2]
    # nn.Sequential registers its modules in this order already: canonical changes nothing.
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    assert ParamSpec.from_module(net).canonical().fingerprint == ParamSpec.from_module(net).fingerprint


def test_tied_tensors_follow_the_tensor_they_share():
    emb = torch.nn.Parameter(torch.randn(5, 3))
    sd = {"lm_head.weight": emb, "wte.weight": emb, "ln.weight": torch.ones(3)}
    spec = ParamSpec.from_state_dict(sd).canonical()
    assert spec.names == ("lm_head.weight", "wte.weight", "ln.weight") and spec["wte.weight"].tied_to == "lm_head.weight"  # the copy right after
    assert spec["wte.weight"].offset == spec["lm_head.weight"].offset and spec.numel == 18


def test_lora_setup_layouts_are_canonical_and_unchanged():
    """Generators saved before record these layouts: LoRASetup's spec keeps its fingerprint."""
    for setup in (LoRASetup(), LoRASetup(rank=2), LoRASetup(layers=(4, 5), max_labels=4), LoRASetup(target_modules=("key", "query", "value"))):
        before = ParamSpec.from_state_dict({k: torch.zeros(s) for k, s in setup.shapes().items()})  # how spec() was built
        assert setup.spec().fingerprint == before.fingerprint == before.canonical().fingerprint
    # Another order of target modules gives the same layout (the file of such an adapter is sorted).
    assert LoRASetup(target_modules=("value", "query")).spec().fingerprint == LoRASetup().spec().fingerprint


def test_other_order_is_named_and_with_shapes_resizes():
    a = ParamSpec.from_state_dict({"fc.weight": torch.zeros(2, 3), "fc.bias": torch.zeros(2)})
    b = ParamSpec.from_state_dict({"fc.bias": torch.zeros(2), "fc.weight": torch.zeros(2, 3)})
    with pytest.raises(SpecMismatchError, match=r"same tensors in another order \(position 0: 'fc.weight' here, 'fc.bias' there\).*canonical"):
        a.check_compatible(b)
    wide = a.with_shapes({"fc.weight": (4, 3), "fc.bias": (4,)})
    assert wide.numel == 16 and wide["fc.bias"].offset == 12 and wide.names == a.names
    with pytest.raises(KeyError, match="'head.weight'"):
        a.with_shapes({"head.weight": (1,)})
