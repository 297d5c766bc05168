"""Round trips of ParamSpec and the vectorizers on random architectures (hypothesis)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from paramgen.spec import NonFiniteWeightsError, ParamSpec, SpecMismatchError
from paramgen.vectorize import ChunkVectorizer, FamilyVectorizer, LayerVectorizer, ModelVectorizer, vectorizer_from_config

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exact equality including signed zeros and NaN payloads: compare the bytes."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


class Residual(nn.Module):
    def __init__(self, c: int, bn: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=not bn)
        self.bn1 = nn.BatchNorm2d(c) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return x + self.conv2(torch.relu(self.bn1(self.conv1(x))))


@st.composite
def architectures(draw) -> nn.Module:
    """A random MLP, CNN or ResNet-like net; optional BatchNorm, tied weights, mixed dtypes."""
    kind = draw(st.sampled_from(["mlp", "cnn", "resnet"]))
    depth = draw(st.integers(1, 4))
    widths = draw(st.lists(st.integers(1, 12), min_size=depth, max_size=depth))
    bn = draw(st.booleans())
    layers: list[nn.Module] = []
    if kind == "mlp":
        prev = draw(st.integers(1, 10))
        for w in widths:
            layers += [nn.Linear(prev, w, bias=draw(st.booleans()))]
            if bn:
                layers.append(nn.BatchNorm1d(w))
            layers.append(nn.ReLU())
            prev = w
    elif kind == "cnn":
        prev = draw(st.integers(1, 3))
        for w in widths:
            layers += [nn.Conv2d(prev, w, draw(st.sampled_from([1, 3])))]
            if bn:
                layers.append(nn.BatchNorm2d(w))
            prev = w
    else:
        prev = widths[0]
        layers.append(nn.Conv2d(1, prev, 3))
        for _ in range(depth):
            layers.append(Residual(prev, bn))
    net = nn.Sequential(*layers)
    if draw(st.booleans()):
        net.tied = layers[0]  # the first layer also under a second name: tied weights
    for module in net.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)) and draw(st.booleans()):
            module.to(draw(st.sampled_from(DTYPES)))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict(keep_vars=True).items():
            if t.is_floating_point():
                vals = torch.randn(t.shape, generator=g, dtype=torch.float64) * 3
                if "running_var" in name:
                    vals = vals.abs() + 0.1
                t.copy_(vals.to(t.dtype))
                if t.numel() > 1:
                    t.view(-1)[0] = -0.0  # signed zeros must survive
            else:
                t.fill_(int(torch.randint(0, 1000, (), generator=g)))
    return net


@st.composite
def vectorizers(draw, spec: ParamSpec):
    d = spec.numel
    kind = draw(st.sampled_from(["model", "layer", "layer_whole", "chunk"]))
    if kind == "model":
        return ModelVectorizer(spec, length=d + draw(st.integers(0, 7)))
    if kind == "layer_whole":
        return LayerVectorizer(spec, chunk_size=None)
    k = draw(st.integers(1, d + 3))
    if kind == "layer":
        return LayerVectorizer(spec, chunk_size=k)
    return ChunkVectorizer(spec, chunk_size=k)


def assert_roundtrip(vectorizer, models: list[nn.Module]) -> None:
    """flatten then unflatten gives every tensor back bit-exactly, ties restored, strict load ok."""
    sds = [m.state_dict() for m in models]
    batch = vectorizer.flatten(sds)
    n, c = vectorizer.rows, vectorizer.width
    assert batch.values.shape == (len(models), n, c)
    assert batch.mask.shape == (len(models), n, c)
    assert int(batch.mask[0].sum()) == vectorizer.spec.numel
    assert bool((batch.values[~batch.mask] == 0).all()), "padding must be zeros"
    restored = vectorizer.unflatten(batch.values, extras=batch.extras)
    for model, sd, out in zip(models, sds, restored, strict=True):
        assert list(out) == list(sd), "keys and their order"
        for name, t in sd.items():
            assert bits_equal(out[name], t), f"{name} changed in the round trip"
        for entry in vectorizer.spec.tensors:
            if entry.tied_to is not None:
                assert out[entry.name] is out[entry.tied_to], f"{entry.name} is not tied back"
        model.load_state_dict(out, strict=True)


@given(data=st.data())
def test_every_vectorizer_roundtrips_bit_exactly(data):
    net = data.draw(architectures())
    spec = ParamSpec.from_module(net)
    twin = data.draw(architectures())  # a second model of the same architecture, other values
    if ParamSpec.from_module(twin).fingerprint != spec.fingerprint:
        twin = net
    vectorizer = data.draw(vectorizers(spec))
    assert_roundtrip(vectorizer, [net, twin])


@given(net=architectures())
def test_spec_json_roundtrip_and_vectorizer_config(net):
    spec = ParamSpec.from_module(net)
    again = ParamSpec.from_dict(spec.to_dict())
    assert again == spec and again.fingerprint == spec.fingerprint
    vec = ChunkVectorizer(spec, chunk_size=5)
    rebuilt = vectorizer_from_config(vec.config(), again)
    x = torch.randn(3, spec.numel, dtype=spec.vector_dtype)
    assert torch.equal(rebuilt.pack(x), vec.pack(x))


@given(net=architectures(), k=st.integers(1, 50))
def test_chunk_positions(net, k):
    spec = ParamSpec.from_module(net)
    vec = ChunkVectorizer(spec, chunk_size=k)
    assert vec.rows == -(-spec.numel // k)
    assert vec.chunk.tolist() == list(range(vec.rows))
    layer_ids = spec.layer_ids()
    assert vec.layer.tolist() == [int(layer_ids[i * k]) for i in range(vec.rows)]
    lay = LayerVectorizer(spec, chunk_size=k)
    flat = torch.arange(spec.numel, dtype=torch.float64).unsqueeze(0)
    rows = lay.pack(flat)[0]  # (N, K)
    for r in range(lay.rows):  # every real entry of a row belongs to that row's layer
        idx = rows[r][lay.mask[r]].long()
        assert bool((layer_ids[idx] == lay.layer[r]).all())


def test_broken_unflatten_is_caught():
    """The round-trip check fails on an unflatten that swaps two same-shape tensors."""
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    spec = ParamSpec.from_module(net)

    class Swapping(ChunkVectorizer):
        def unflatten(self, values, **kw):
            out = super().unflatten(values, **kw)
            for sd in out:
                sd["0.weight"], sd["1.weight"] = sd["1.weight"], sd["0.weight"]
            return out

    assert_roundtrip(ChunkVectorizer(spec, chunk_size=3), [net])
    with pytest.raises(AssertionError, match="0.weight changed"):
        assert_roundtrip(Swapping(spec, chunk_size=3), [net])


def test_ties_are_stored_once():
    emb = nn.Embedding(10, 4)
    net = nn.Module()
    net.emb, net.out = emb, nn.Linear(4, 10, bias=False)
    net.out.weight = emb.weight
    spec = ParamSpec.from_module(net)
    assert spec.numel == 40 and spec["out.weight"].tied_to == "emb.weight"
    sd = spec.unflatten(torch.arange(40.0))[0]
    assert sd["out.weight"] is sd["emb.weight"]


def test_subset_selection_by_name_patterns():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(2, 3))
    spec = ParamSpec.from_module(net, include=["1.*"])
    assert [t.name for t in spec.vector_tensors] == ["1.weight", "1.bias", "1.running_mean", "1.running_var"]
    assert [t.name for t in spec.extra_tensors] == ["1.num_batches_tracked"]
    head = ParamSpec.from_module(net).select(include=["2.*"])
    assert head.numel == 9 and head == ParamSpec.from_module(net, include=["2.*"])
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    flat, extras = head.flatten({k: v for k, v in sd.items() if k.startswith("2.")})
    partial = head.unflatten(flat + 1)[0]
    assert set(partial) == {"2.weight", "2.bias"}  # no base: only the selection
    full = head.unflatten(flat + 1, base=sd)[0]
    net.load_state_dict(full, strict=True)
    assert torch.equal(net[2].bias, sd["2.bias"] + 1) and torch.equal(net[0].weight, sd["0.weight"])
    with pytest.raises(ValueError, match="no floating tensor"):
        ParamSpec.from_module(net, include=["nothing*"])


def test_zoo_fast_path_matches_per_model_path():
    nets = [nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5)) for _ in range(4)]
    spec = ParamSpec.from_module(nets[0])
    sds = [n.state_dict() for n in nets]
    stacked = {k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}
    a, ea = spec.flatten(sds)
    b, eb = spec.flatten_stacked(stacked)
    assert torch.equal(a, b) and torch.equal(ea["1.num_batches_tracked"], eb["1.num_batches_tracked"])
    back = spec.unflatten_stacked(b, extras=eb)
    assert all(torch.equal(back[k], stacked[k]) for k in back)


# ----------------------------------------------------------------------------- errors
def test_wrong_vector_length_is_rejected():
    spec = ParamSpec.from_module(nn.Linear(3, 2))
    with pytest.raises(SpecMismatchError, match=r"shape \(B, 8\), got \(1, 9\)"):
        spec.unflatten(torch.zeros(1, 9))
    vec = ChunkVectorizer(spec, chunk_size=3)
    with pytest.raises(SpecMismatchError, match=r"\(B, 3, 3\)"):
        vec.unflatten(torch.zeros(1, 4, 3))


def test_state_dict_of_another_architecture_is_rejected():
    spec = ParamSpec.from_module(nn.Linear(3, 2))
    with pytest.raises(SpecMismatchError, match="shape"):
        spec.flatten(nn.Linear(3, 4).state_dict())
    with pytest.raises(SpecMismatchError, match="another architecture"):
        spec.flatten(nn.Sequential(nn.Linear(3, 2)).state_dict())
    with pytest.raises(SpecMismatchError, match="another architecture"):
        spec.check_compatible(ParamSpec.from_module(nn.Linear(3, 4)))
    with pytest.raises(ValueError, match="length must be at least"):
        ModelVectorizer(spec, length=4)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_rejected(bad):
    net = nn.Linear(3, 2)
    with torch.no_grad():
        net.bias[1] = bad
    spec = ParamSpec.from_module(net)
    with pytest.raises(NonFiniteWeightsError, match="bias"):
        spec.flatten(net.state_dict())
    with pytest.raises(NonFiniteWeightsError):
        spec.unflatten(torch.full((1, spec.numel), bad))


@given(widths=st.lists(st.integers(1, 12), min_size=1, max_size=4), chunk=st.integers(1, 9), layout=st.sampled_from(["chunk", "layer-chunk", "layer", "model"]))
def test_family_round_trip_and_padding(widths, chunk, layout):
    """Every member of a family packs into the common (N, C) and unpacks bit-exactly; empty entries are masked."""
    nets = {f"w{i}-{w}": nn.Sequential(nn.Linear(3, w), nn.ReLU(), nn.Linear(w, 2)) for i, w in enumerate(widths)}
    specs = {k: ParamSpec.from_module(m) for k, m in nets.items()}
    if layout == "layer":
        fam = FamilyVectorizer.layerwise(specs)
    elif layout == "model":
        fam = FamilyVectorizer.modelwise(specs)
    else:
        fam = FamilyVectorizer.chunked(specs, chunk_size=chunk, layerwise=layout == "layer-chunk")
    for key, net in nets.items():
        flat = fam.specs[key].flatten([net.state_dict()])[0]
        rows = fam.pack(flat, key)
        assert rows.shape == (1, fam.rows, fam.width)
        assert int(fam.mask_of(key).sum()) == flat.shape[1]
        assert (rows[0][~fam.mask_of(key)] == 0).all()
        assert torch.equal(fam.unpack(rows, key).view(torch.uint8), flat.view(torch.uint8))
    again = FamilyVectorizer.from_config(fam.config())
    assert again.rows == fam.rows and again.keys == fam.keys


def test_family_rejects_bad_members():
    a = ParamSpec.from_module(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="at least the widest"):
        FamilyVectorizer({"a": ChunkVectorizer(a, chunk_size=4), "b": ChunkVectorizer(a, chunk_size=5)}, width=4)
    with pytest.raises(ValueError, match="at least the largest"):
        FamilyVectorizer({"a": ChunkVectorizer(a, chunk_size=4)}, rows=1)
    with pytest.raises(ValueError, match="at least one member"):
        FamilyVectorizer({})


# ---------------------------------------------------------------- Layout: one architecture is a family of one
def _mlp(i: int, h: int) -> ParamSpec:
    return ParamSpec.from_module(nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, 2)))


def test_layout_treats_one_architecture_as_a_family_of_one():
    from paramgen.layout import SINGLE, Layout
    from paramgen.normalize import GlobalScale

    spec = _mlp(3, 5)
    flat = torch.randn(6, spec.numel, generator=torch.Generator().manual_seed(0))
    single = Layout(ChunkVectorizer(spec, chunk_size=8), GlobalScale().fit(flat, spec=spec))
    of_one = Layout(FamilyVectorizer({SINGLE: ChunkVectorizer(spec, chunk_size=8)}), single.normalizer)
    archs = single.check_archs(None, len(flat))
    assert archs == [SINGLE] * 6 and single.specs == of_one.specs == {SINGLE: spec}
    x, mask = single.to_rows(flat, None, archs)
    y, mask_y = of_one.to_rows(list(flat), None, of_one.check_archs(archs, 6))
    assert torch.equal(x, y) and torch.equal(mask, mask_y) and mask.shape == (single.rows, single.width)  # one architecture: a shared mask
    back = single.from_rows(x, None, archs)
    assert isinstance(back, torch.Tensor) and torch.allclose(back, flat, atol=1e-5)  # a single architecture gives one (M, D) tensor
    assert torch.equal(torch.stack(of_one.from_rows(x, None, archs)), back)  # a family a list, of the same values
    with pytest.raises(ValueError, match="archs= is for a generator over a FamilyVectorizer"):
        single.check_archs(archs, 6)
    with pytest.raises(SpecMismatchError, match=r"expected flat weight vectors of shape \(M, 32\), got \(6, 31\)"):
        single.to_rows(flat[:, :-1], None, archs)


def test_layout_of_a_family_groups_models_by_architecture():
    from paramgen.layout import Layout
    from paramgen.normalize import PerLayerZScore

    specs = {"small": _mlp(3, 4), "big": _mlp(3, 9)}
    layout = Layout(FamilyVectorizer.chunked(specs, chunk_size=8))
    nets = {k: nn.Sequential(nn.Linear(3, h), nn.ReLU(), nn.Linear(h, 2)) for k, h in (("small", 4), ("big", 9))}
    sds = [nets["big"].state_dict(), nets["small"].state_dict(), nets["big"].state_dict()]
    flat, archs = layout.flatten(sds, None)  # architectures inferred from the state dicts
    assert archs == ["big", "small", "big"] and [f.numel() for f in flat] == [specs[a].numel for a in archs]
    x, mask = layout.to_rows(flat, None, archs)
    assert x.shape == mask.shape == (3, layout.rows, layout.width)  # several architectures: a mask per model
    assert int(mask[1].sum()) == specs["small"].numel and int(mask[0].sum()) == specs["big"].numel
    back = layout.unflatten(layout.from_rows(x, None, archs), archs)
    assert all(torch.equal(back[i][k], sds[i][k]) for i in range(3) for k in sds[i])
    with pytest.raises(SpecMismatchError, match=r"model 1 is labelled 'big' \(\d+ weights\) but has \d+ values"):
        layout.to_rows(flat, None, ["big", "big", "big"])
    with pytest.raises(KeyError, match="unknown architecture 'huge'"):
        layout.check_archs(["huge", "big", "big"], 3)
    with pytest.raises(ValueError, match="state dict 0 matches no member of this family"):
        layout.flatten([{"w": torch.zeros(2)}], None)
    with pytest.raises(TypeError, match="takes normalizer=None or GlobalScale"):
        Layout(FamilyVectorizer.chunked(specs, chunk_size=8), PerLayerZScore(specs["big"]))


def test_interfaces_sit_at_the_bottom():
    """interfaces imports nothing of paramgen but spec; VectorBatch lives there (vectorize re-exports it)."""
    import ast
    from pathlib import Path

    import paramgen.interfaces
    import paramgen.vectorize

    tree = ast.parse(Path(paramgen.interfaces.__file__).read_text())
    mine = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("paramgen")}
    assert mine <= {"paramgen.spec"}
    assert paramgen.vectorize.VectorBatch is paramgen.interfaces.VectorBatch
