"""Deltas over a pinned base (`paramgen.base`): exact round trips, the error bound outside
the exact domain, refusals of another base by zoos, datasets and saved generators, and a
generator that learns and samples deltas."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file

from paramgen import Generator, ModelVectorizer, ParamSpec
from paramgen.base import BaseMismatchError, PinnedBase
from paramgen.chunks import ChunkDataset, ChunkLayout
from paramgen.normalize import PerLayerZScore
from paramgen.priors import KDEPrior
from paramgen.tokenizers import IdentityTokenizer
from paramgen.training import FitConfig, fit
from paramgen.zoo import Zoo, ZooWriter

# Precision in bits of each dtype (the p of the documented condition).
PRECISION = {torch.float32: 24, torch.bfloat16: 8, torch.float16: 11}


def in_domain(w: float, b: float, p: int) -> bool:
    """The documented exact domain: a zero, or magnitudes within a factor 2 ** (52 - p)."""
    lo, hi = sorted((abs(w), abs(b)))
    return lo == 0 or hi < lo * 2.0 ** (52 - p)


def round_trip(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    base = PinnedBase.of({"x": b})
    return base.apply(base.delta({"x": w}))["x"]


def as_dtype(values: list[float], dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).to(dtype)


finite32 = st.floats(min_value=-(2.0**120), max_value=2.0**120, allow_nan=False, allow_infinity=False, width=32)
finite16 = st.floats(min_value=-(2.0**15), max_value=2.0**15, allow_nan=False, allow_infinity=False, width=16)
eps = st.floats(min_value=-0.5, max_value=0.5, allow_nan=False)


def fine_tune_pairs(values: st.SearchStrategy[float]) -> st.SearchStrategy[tuple[float, float]]:
    """``(w, b)`` pairs a fine-tune makes: w = b * (1 + eps), w == b, weights moved to or from zero."""
    return st.one_of(
        st.tuples(values, eps).map(lambda t: (t[0] * (1 + t[1]), t[0])),
        values.map(lambda b: (b, b)),
        values.map(lambda b: (0.0, b)),
        values.map(lambda w: (w, 0.0)),
    )


@given(st.lists(st.one_of(fine_tune_pairs(finite32), st.tuples(finite32, finite32)), min_size=1, max_size=16), st.sampled_from([torch.float32, torch.bfloat16]))
def test_round_trip_is_exact_in_the_documented_domain_and_bounded_outside(pairs, dtype):
    w = as_dtype([p[0] for p in pairs], dtype)
    b = as_dtype([p[1] for p in pairs], dtype)
    out = round_trip(w, b)
    assert out.dtype == dtype
    prec = PRECISION[dtype]
    tiny = torch.finfo(dtype).smallest_normal * 2.0 ** -(prec - 1)  # the smallest subnormal
    for wi, bi, oi in zip(w.double().tolist(), b.double().tolist(), out.double().tolist(), strict=True):
        if in_domain(wi, bi, prec):
            assert oi == wi or (math.isnan(oi) and math.isnan(wi)), (wi, bi, oi)
        else:  # float64 rounding of D and of the sum, then the cast
            assert abs(oi - wi) <= 2.0**-prec * abs(wi) + 2.0**-51 * (abs(wi) + abs(bi)) + tiny, (wi, bi, oi)


@given(st.lists(fine_tune_pairs(finite16), min_size=1, max_size=16))
def test_round_trip_is_exact_for_float16_fine_tunes(pairs):
    w = as_dtype([p[0] for p in pairs], torch.float16)
    b = as_dtype([p[1] for p in pairs], torch.float16)
    assert torch.equal(round_trip(w, b), w)


def test_outside_the_domain_is_not_exact_but_bounded():
    w, b = torch.tensor([1e-10]), torch.tensor([1.0])
    out = round_trip(w, b)
    assert not torch.equal(out, w)  # the documented counter-example
    assert abs(out.double().item() - 1e-10) <= 2.0**-24 * 1e-10 + 2.0**-51 * (1 + 1e-10)


def test_float32_deltas_are_exact_under_sterbenz():
    torch.manual_seed(0)
    b = torch.randn(1000)
    w = b * (1 + 0.01 * torch.randn(1000))
    base = PinnedBase.of({"x": b})
    d32 = base.delta({"x": w}, dtype=torch.float32)
    assert torch.equal(base.apply(d32)["x"], w)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_or_bases_raise(bad):
    clean = torch.ones(3)
    dirty = torch.tensor([1.0, bad, 1.0])
    with pytest.raises(FloatingPointError, match="'x'"):
        PinnedBase.of({"x": clean}).delta({"x": dirty})
    with pytest.raises(FloatingPointError, match="'x'"):
        PinnedBase.of({"x": dirty}).delta({"x": clean})
    with pytest.raises(FloatingPointError, match="'x'"):
        PinnedBase.of({"x": clean}).apply({"x": dirty})


def test_delta_and_apply_follow_the_input_device_and_refuse_other_shapes():
    base = PinnedBase.of({"x": torch.ones(2, 3)})
    d = base.delta({"x": torch.zeros(2, 3)})
    assert d["x"].device == torch.device("cpu") and d["x"].dtype == torch.float64
    with pytest.raises(BaseMismatchError, match=r"'x'.*\(3, 2\)"):
        base.delta({"x": torch.zeros(3, 2)})
    with pytest.raises(BaseMismatchError, match="no tensor 'y'"):
        base.apply({"y": torch.zeros(1)})


# --------------------------------------------------------------------------- records
def test_file_and_state_dict_digests_agree_and_records_round_trip_through_json(tmp_path):
    state = {"b": torch.zeros(2), "a": torch.arange(6.0).reshape(2, 3)}
    path = tmp_path / "base.safetensors"
    save_file(state, str(path))
    from_file, from_state = PinnedBase.of(path), PinnedBase.of(state)
    assert from_file.sha256 == from_state.sha256
    assert from_file.path == path and from_state.path is None
    record = json.loads(json.dumps(from_file.record()))
    from_state.check(record)
    assert torch.equal(from_file.tensor("a"), state["a"])
    assert from_file.read_flat("a", 2, 5).tolist() == [2.0, 3.0, 4.0]
    assert PinnedBase.of(from_file) is from_file


def test_check_names_the_differing_tensor_or_both_digests():
    base = PinnedBase.of({"a": torch.zeros(2, 3), "b": torch.zeros(2)})
    record = base.record()
    other_values = PinnedBase.of({"a": torch.ones(2, 3), "b": torch.zeros(2)})
    with pytest.raises(BaseMismatchError) as err:
        other_values.check(record, what="zoo z")
    assert base.sha256 in str(err.value) and other_values.sha256 in str(err.value)
    with pytest.raises(BaseMismatchError, match=r"'a' is \(3, 2\).*expected \(2, 3\)"):
        PinnedBase.of({"a": torch.zeros(3, 2), "b": torch.zeros(2)}).check(record)
    with pytest.raises(BaseMismatchError, match="expected tensor 'b'"):
        PinnedBase.of({"a": torch.zeros(2, 3)}).check(record)
    with pytest.raises(BaseMismatchError, match="'a'.*float64"):
        PinnedBase.of({"a": torch.zeros(2, 3, dtype=torch.float64), "b": torch.zeros(2)}).check(record)


def test_check_covers_a_spec_a_layout_and_shapes():
    net = torch.nn.Linear(3, 2)
    spec = ParamSpec.from_module(net)
    base = PinnedBase.of(net)
    base.check_covers(spec)
    base.check_covers(ChunkLayout(spec, 4))
    base.check_covers({"weight": (2, 3)})
    with pytest.raises(BaseMismatchError, match=r"'weight' is \(2, 3\).*expected \(3, 3\)"):
        base.check_covers([("weight", (3, 3))])
    with pytest.raises(BaseMismatchError, match="lacks tensor 'bias'"):
        PinnedBase.of({"weight": net.weight}).check_covers(spec)


# --------------------------------------------------------------------------- zoos
def tuned(base: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}


def base_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.detach().clone() for k, v in torch.nn.Linear(6, 5).state_dict().items()}


def test_zoo_writer_records_the_base_and_refuses_others(tmp_path):
    base = base_state()
    root = tmp_path / "zoo"
    writer = ZooWriter(root, base=base)
    for seed in range(2):
        writer.add(tuned(base, seed), task="t", run_id=f"r{seed}")
    zoo = Zoo.open(root)
    assert zoo.base == PinnedBase.of(base).record()
    zoo.check_base(base)
    other = {k: v + 1 for k, v in base.items()}
    with pytest.raises(BaseMismatchError, match=PinnedBase.of(base).sha256):
        zoo.check_base(other)
    with pytest.raises(BaseMismatchError, match=PinnedBase.of(base).sha256):
        ZooWriter(root, base=other)
    with pytest.raises(BaseMismatchError, match="pass base="):
        ZooWriter(root)
    # a checkpoint the base does not cover is refused, and the zoo is left as it was
    with pytest.raises(BaseMismatchError, match="checkpoint .*'weight'"):
        ZooWriter(root, base=base).add({"weight": torch.zeros(4, 6), "bias": torch.zeros(4)}, task="t", run_id="r9")
    assert len(Zoo.open(root)) == 2
    ZooWriter(tmp_path / "plain").add(base, task="t")
    assert Zoo.open(tmp_path / "plain").base is None
    with pytest.raises(BaseMismatchError, match="records no base"):
        Zoo.open(tmp_path / "plain").check_base(base)


def test_a_base_pinned_on_a_zoo_with_runs_must_cover_them(tmp_path):
    ZooWriter(tmp_path / "zoo").add({"w": torch.zeros(3)}, task="t")
    with pytest.raises(BaseMismatchError, match="run .*'w'"):
        ZooWriter(tmp_path / "zoo", base={"w": torch.zeros(4)})
    writer = ZooWriter(tmp_path / "zoo", base={"w": torch.ones(3)})
    writer.add({"w": torch.full((3,), 2.0)}, task="t")
    assert Zoo.open(tmp_path / "zoo").base is not None


# --------------------------------------------------------------------------- datasets
@pytest.mark.parametrize("reader", ["pread", "safetensors"])
@pytest.mark.parametrize("base_kind", ["file", "state_dict"])
def test_chunk_dataset_serves_deltas_read_lazily(tmp_path, reader, base_kind):
    base = base_state()
    path = tmp_path / "base.safetensors"
    save_file(base, str(path))
    states = [tuned(base, s) for s in range(2)]
    files = []
    for i, sd in enumerate(states):
        files.append(tmp_path / f"m{i}.safetensors")
        save_file(sd, str(files[-1]))
    layout = ChunkLayout(ParamSpec.from_state_dict(base), 8)
    data = ChunkDataset(layout, files, base=path if base_kind == "file" else base, reader=reader)
    assert data.base.sha256 == PinnedBase.of(path).sha256
    flat_d = [torch.cat([(sd[t.name].double() - base[t.name].double()).reshape(-1) for t in layout.tensors]) for sd in states]
    for i in range(len(data)):
        item = data[i]
        c, ckpt = item["chunk"], item["checkpoint"]
        t = layout.tensors[item["tensor"]]
        start = sum(u.numel for u in layout.tensors[: item["tensor"]]) + int(layout.offsets[c])
        n = int(layout.lengths[c])
        assert torch.equal(item["values"][:n], flat_d[ckpt][start : start + n].float()), (i, t.name)
        assert not item["values"][n:].any()
    for i, sd in enumerate(states):  # state_dict gives the weights, not the deltas
        got = data.state_dict(i)
        assert all(torch.equal(got[k], sd[k]) for k in sd)
    memory = ChunkDataset.from_state_dicts(layout, states, base=base)
    assert all(torch.equal(memory[i]["values"], data[i]["values"]) for i in range(len(data)))


def test_chunk_dataset_refuses_a_base_that_does_not_cover_the_layout(tmp_path):
    base = base_state()
    layout = ChunkLayout(ParamSpec.from_state_dict(base), 8)
    with pytest.raises(BaseMismatchError, match="'weight'"):
        ChunkDataset.from_state_dicts(layout, base, base={"weight": torch.zeros(5, 7), "bias": torch.zeros(5)})
    with pytest.raises(BaseMismatchError, match="lacks tensor 'bias'"):
        ChunkDataset.from_state_dicts(layout, base, base={"weight": torch.zeros(5, 6)})


def test_chunk_dataset_from_a_base_pinned_zoo(tmp_path):
    base = base_state()
    writer = ZooWriter(tmp_path / "zoo", base=base)
    states = [tuned(base, s) for s in range(3)]
    for s, sd in enumerate(states):
        writer.add(sd, task="t", run_id="run" if s < 2 else "other", epoch=s)
    zoo = writer.zoo()
    layout = ChunkLayout(zoo.spec(), 8)
    data = ChunkDataset.from_zoo(layout, zoo, base=base)
    reference = ChunkDataset.from_state_dicts(layout, [zoo.state_dict(i) for i in range(len(zoo))], base=base)
    assert len(data) == len(reference)
    assert all(torch.equal(data[i]["values"], reference[i]["values"]) for i in range(len(data)))
    assert all(torch.equal(data.state_dict(i)["weight"], zoo.state_dict(i)["weight"]) for i in range(len(zoo)))
    safe = ChunkDataset(layout, zoo, base=base, reader="safetensors")  # a Zoo as `checkpoints`
    assert all(torch.equal(safe[i]["values"], reference[i]["values"]) for i in range(len(data)))
    with pytest.raises(BaseMismatchError, match="pass base="):
        ChunkDataset.from_zoo(layout, zoo)
    with pytest.raises(BaseMismatchError, match=PinnedBase.of(base).sha256):
        ChunkDataset.from_zoo(layout, zoo, base={k: v * 2 for k, v in base.items()})
    # absolute=True: the weights themselves, as from a zoo without a base
    absolute = ChunkDataset.from_zoo(layout, zoo, absolute=True)
    plain = ChunkDataset.from_state_dicts(layout, [zoo.state_dict(i) for i in range(len(zoo))])
    assert absolute.base is None and all(torch.equal(absolute[i]["values"], plain[i]["values"]) for i in range(len(plain)))
    with pytest.raises(ValueError, match="absolute=True.*no base"):
        ChunkDataset.from_zoo(layout, zoo, base=base, absolute=True)


# --------------------------------------------------------------------------- generators
def small_generator(base: object = None, normalize: bool = False) -> Generator:
    spec = ParamSpec.from_state_dict(base_state())
    normalizer = PerLayerZScore(spec) if normalize else None
    return Generator(vectorizer=ModelVectorizer(spec), tokenizer=IdentityTokenizer(rows=1, width=spec.numel), prior=KDEPrior(), normalizer=normalizer, base=base)


def test_generator_learns_deltas_and_samples_base_plus_delta(tmp_path):
    base = base_state()
    states = [tuned(base, s) for s in range(6)]
    gen = fit(small_generator(base, True), states, config=FitConfig(progress=False))
    # the normalizer's statistics are those of D: means near 0 and scales near 0.01
    spec = gen.spec
    flat_d = torch.stack([torch.cat([(sd[t.name] - base[t.name]).reshape(-1) for t in spec.vector_tensors]) for sd in states])
    plain = fit(small_generator(None, True), [{k: sd[k] - base[k] for k in sd} for sd in states], config=FitConfig(progress=False))
    assert torch.allclose(gen.normalizer.transform(flat_d), plain.normalizer.transform(flat_d), atol=1e-5)
    # sampling: base + D, added in float64 and cast once
    g = torch.Generator().manual_seed(3)
    sd = gen.sample(n=1, generator=g)[0]
    d = gen.sample_flat(n=1, generator=torch.Generator().manual_seed(3), deltas=True)
    expected = spec.unflatten(d.double() + PinnedBase.of(base).vector(spec))[0]
    assert all(torch.equal(sd[k], expected[k]) for k in expected)
    assert (sd["weight"] - base["weight"]).abs().max() < 0.2  # near the base, not near zero
    w = gen.sample_flat(n=1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(w, (d.double() + PinnedBase.of(base).vector(spec)).float())
    # reconstruct takes and returns weights
    flat_w = spec.flatten(states)[0]
    assert torch.allclose(gen.reconstruct(flat_w), flat_w, atol=1e-6)
    with pytest.raises(ValueError, match="pinned base.*drop base="):
        gen.sample(n=1, base=base)
    net = torch.nn.Linear(6, 5)
    gen.sample_into(net, generator=torch.Generator().manual_seed(3))
    assert torch.equal(net.weight.detach(), sd["weight"])


def test_generator_from_pretrained_requires_and_checks_the_base(tmp_path):
    base = base_state()
    gen = fit(small_generator(base), [tuned(base, s) for s in range(4)], config=FitConfig(progress=False))
    folder = gen.save_pretrained(tmp_path / "gen")
    assert json.loads((folder / "config.json").read_text())["base"]["sha256"] == PinnedBase.of(base).sha256
    loaded = Generator.from_pretrained(folder, base=base)
    a = loaded.sample(n=1, generator=torch.Generator().manual_seed(0))[0]
    b = gen.sample(n=1, generator=torch.Generator().manual_seed(0))[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(BaseMismatchError, match="pass base="):
        Generator.from_pretrained(folder)
    with pytest.raises(BaseMismatchError, match=PinnedBase.of(base).sha256):
        Generator.from_pretrained(folder, base={k: v + 1 for k, v in base.items()})
    with pytest.raises(BaseMismatchError, match="'weight'"):
        Generator.from_pretrained(folder, base={"weight": torch.zeros(5, 7), "bias": base["bias"]})
    with pytest.raises(BaseMismatchError, match="expected tensor 'bias'"):
        Generator.from_pretrained(folder, base={"weight": base["weight"]})
    plain = fit(small_generator(), [tuned(base, s) for s in range(4)], config=FitConfig(progress=False)).save_pretrained(tmp_path / "plain")
    with pytest.raises(BaseMismatchError, match="records no base"):
        Generator.from_pretrained(plain, base=base)
    assert "base" not in json.loads((Path(plain) / "config.json").read_text())
    # an edited base record is named as an edit
    config = json.loads((folder / "config.json").read_text())
    config["base"]["sha256"] = "0" * 64
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="edited after saving"):
        Generator.from_pretrained(folder, base=base)


def test_generator_base_refusals(tmp_path):
    base = base_state()
    with pytest.raises(BaseMismatchError, match="'weight'"):
        small_generator({"weight": torch.zeros(5, 7), "bias": torch.zeros(5)})
    gen = small_generator(base)
    with pytest.raises(ValueError, match="dataset of rows"):
        fit(gen, torch.utils.data.TensorDataset(torch.zeros(2, 1, 35)), config=FitConfig(progress=False))
    writer = ZooWriter(tmp_path / "zoo", base=base)
    writer.add(tuned(base, 0), task="t")
    with pytest.raises(BaseMismatchError, match=PinnedBase.of(base).sha256):
        fit(small_generator({k: v + 1 for k, v in base.items()}), writer.zoo(), config=FitConfig(progress=False))
    fitted = fit(small_generator(base), writer.zoo(), config=FitConfig(progress=False))
    assert fitted.fitted
