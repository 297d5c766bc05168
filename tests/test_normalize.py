"""Normalizers invert, carry their statistics, and reject bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

from paramgen.chunks import ChunkLayout
from paramgen.normalize import ChunkStats, GlobalScale, PerLayerZScore, PerTaskZScore, normalizer_from_config
from paramgen.spec import NonFiniteWeightsError, ParamSpec, SpecMismatchError

NET = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 3))
SPEC = ParamSpec.from_module(NET)


def zoo(n: int, seed: int, scale: float) -> torch.Tensor:
    """``n`` flat vectors with per-tensor offsets/scales and positive running_var."""
    g = torch.Generator().manual_seed(seed)
    flat = torch.randn(n, SPEC.numel, generator=g) * scale
    flat += torch.randn(len(SPEC.vector_tensors), generator=g)[SPEC.segment_ids()] * scale
    var = SPEC["1.running_var"]
    flat[:, var.offset : var.offset + var.numel] = flat[:, var.offset : var.offset + var.numel].abs() + 0.01
    return flat


def normalizers():
    return st.sampled_from(["task", "layer", "chunk", "global"])


def make(kind: str):
    makers = {"task": PerTaskZScore, "layer": lambda: PerLayerZScore(SPEC), "chunk": lambda: ChunkStats(ChunkLayout(SPEC, 8)), "global": GlobalScale}
    return makers[kind]()


@given(kind=normalizers(), n=st.integers(2, 9), seed=st.integers(0, 10_000), scale=st.floats(1e-3, 1e3))
def test_inverse_undoes_transform(kind, n, seed, scale):
    flat = zoo(n, seed, scale)
    tasks = [f"t{i % 3}" for i in range(n)]
    norm = make(kind).fit(flat, tasks=tasks)
    z = norm.transform(flat, tasks=tasks)
    assert torch.isfinite(z).all()
    back = norm.inverse(z, tasks=tasks)
    torch.testing.assert_close(back, flat, rtol=1e-6, atol=1e-6 * scale)


@given(kind=normalizers(), seed=st.integers(0, 10_000))
def test_fitted_statistics_standardize(kind, seed):
    flat = zoo(12, seed, 4.0)
    tasks = ["a"] * 6 + ["b"] * 6
    z = make(kind).fit(flat, tasks=tasks).transform(flat, tasks=tasks).double()
    if kind == "task":
        for rows in (z[:6], z[6:]):
            assert abs(rows.mean()) < 1e-6 and abs(rows.std(unbiased=False) - 1) < 1e-6
    elif kind in ("layer", "chunk"):  # chunk: the same per-tensor z-score (no log transform)
        seg = SPEC.segment_ids()
        for i in range(len(SPEC.vector_tensors)):
            part = z[:, seg == i]
            if part.numel() > 1:
                assert abs(part.mean()) < 1e-6 and abs(part.std(unbiased=False) - 1) < 1e-5
    else:
        assert abs(z.pow(2).mean().sqrt() - 1) < 1e-6


@pytest.mark.parametrize("kind", ["task", "layer", "chunk", "global"])
def test_statistics_survive_safetensors_and_json(kind, tmp_path):
    flat = zoo(6, 0, 2.0)
    tasks = ["a", "b"] * 3
    norm = make(kind).fit(flat, tasks=tasks)
    save_file(norm.state_dict(), tmp_path / "norm.safetensors")
    again = normalizer_from_config(norm.config(), load_file(tmp_path / "norm.safetensors"), spec=SPEC)
    assert torch.equal(again.transform(flat, tasks=tasks), norm.transform(flat, tasks=tasks))


def test_per_layer_log_transform_of_running_var():
    flat = zoo(4, 1, 1.0)
    norm = PerLayerZScore(SPEC).fit(flat)
    var = SPEC["1.running_var"]
    i = [t.name for t in SPEC.vector_tensors].index("1.running_var")
    logged = flat[:, var.offset : var.offset + var.numel].double().log()
    assert torch.allclose(norm.mean[i], logged.mean())
    bad = flat.clone()
    bad[0, var.offset] = -1.0
    with pytest.raises(ValueError, match="1.running_var"):
        norm.transform(bad)


def test_bad_input():
    flat = zoo(4, 0, 1.0)
    with pytest.raises(RuntimeError, match="not fitted"):
        GlobalScale().transform(flat)
    with pytest.raises(ValueError, match="one task name per row"):
        PerTaskZScore().fit(flat)
    norm = PerTaskZScore().fit(flat, tasks=["a", "a", "b", "b"])
    with pytest.raises(KeyError, match="not seen in fit"):
        norm.transform(flat, tasks=["a", "a", "c", "b"])
    lenient = PerTaskZScore(unknown="global").fit(flat, tasks=["a", "a", "b", "b"])
    assert torch.isfinite(lenient.transform(flat, tasks=["c"] * 4)).all()
    with pytest.raises(SpecMismatchError, match="length"):
        PerLayerZScore(SPEC).fit(flat).transform(flat[:, :-1])
    nan = flat.clone()
    nan[1, 3] = float("nan")
    with pytest.raises(NonFiniteWeightsError):
        GlobalScale().fit(nan)


def test_global_scale_with_log_variances_serves_several_architectures():
    from torch import nn

    from paramgen.normalize import GlobalScale
    from paramgen.spec import ParamSpec

    nets = [nn.Sequential(nn.Linear(3, w), nn.BatchNorm1d(w)) for w in (2, 5)]
    specs = [ParamSpec.from_module(n) for n in nets]
    g = torch.Generator().manual_seed(0)
    groups = []
    for spec in specs:
        flat = torch.randn(4, spec.numel, generator=g)
        t = spec["1.running_var"]
        flat[:, t.offset : t.offset + t.numel] = flat[:, t.offset : t.offset + t.numel].exp() * 10
        groups.append((flat, spec))
    norm = GlobalScale(log=("*running_var",)).fit_groups(groups)
    fan = GlobalScale(log=("*running_var",), fan_in=True).fit_groups(groups)
    for flat, spec in groups:
        assert torch.allclose(fan.inverse(fan.transform(flat, spec=spec), spec=spec), flat, rtol=1e-5)
        z = norm.transform(flat, spec=spec)
        assert torch.allclose(norm.inverse(z, spec=spec), flat, rtol=1e-5)
        t = spec["1.running_var"]
        logged = z[:, t.offset : t.offset + t.numel]
        assert logged.abs().max() < 5  # z-scored in log space, not divided by the weights' scale
    with pytest.raises(ValueError, match="needs the spec"):
        norm.transform(groups[0][0])
    bad = groups[0][0].clone()
    t = specs[0]["1.running_var"]
    bad[0, t.offset] = -1.0
    with pytest.raises(ValueError, match="must be positive"):
        norm.transform(bad, spec=specs[0])


def test_chunk_stats_follow_the_device_of_their_input():
    """Statistics fitted on the CPU serve rows on a device, moved once by to() or per call,
    and stay float64; chunk ids may come from the CPU."""
    from fake_device import fake_device

    flat = zoo(5, 0, 2.0)
    layout = ChunkLayout(SPEC, 8)
    cpu = ChunkStats(layout).fit(flat)
    rows = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([0, 4, layout.num_chunks - 1])
    expected = (cpu.transform_chunks(rows, ids), cpu.inverse_chunks(rows, ids), cpu.transform(flat))
    with fake_device() as dev:
        for stats in (ChunkStats(layout).fit(flat), ChunkStats(layout).fit(flat).to(dev)):
            got = (stats.transform_chunks(rows.to(dev), ids), stats.inverse_chunks(rows.to(dev), ids), stats.transform(flat.to(dev)))
            assert all(g.device == dev and torch.equal(g.cpu(), e) for g, e in zip(got, expected, strict=True))
            assert stats.mean.dtype == torch.float64
