"""SpectrumSelector: SNR formulas against independent numpy references, type grouping,
top-fraction selection, streaming scans of safetensors files, and bad input."""

from __future__ import annotations

import math
import weakref

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from scipy import integrate, optimize
from torch import nn

from paramgen.interfaces import Selector
from paramgen.selectors import LayerSNR, SpectrumSelector, layer_snr, layer_type, rank_by_type
from paramgen.spec import NonFiniteWeightsError, ParamSpec, SpecMismatchError


# ----------------------------------------------------------------------------- references
def _svals(w: np.ndarray) -> tuple[np.ndarray, int, int]:
    mat = w.reshape(w.shape[0], -1).astype(np.float64)
    return np.linalg.svd(mat, compute_uv=False), mat.shape[0], mat.shape[1]


def ref_spectrum(w: np.ndarray) -> float:
    """The Spectrum tool's score, re-derived from its description with numpy."""
    s, m, n = _svals(w)
    sigma = (np.percentile(s, 75) - np.percentile(s, 25)) / 1.349
    beta = min(m, n) / max(m, n)
    eps = sigma * (1 + np.sqrt(beta))
    signal = s[s > eps].sum()
    below = s[s <= eps]
    noise = below.sum() if below.size else 1.0
    return math.inf if noise == 0 else float(signal / noise / s.max())


def ref_mp_median(beta: float) -> float:
    a, b = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2
    dens = lambda x: math.sqrt(max((b - x) * (x - a), 0.0)) / (2 * math.pi * beta * x)  # noqa: E731
    return optimize.brentq(lambda x: integrate.quad(dens, a, x, limit=200)[0] - 0.5, a + 1e-12, b)


def ref_mp(w: np.ndarray) -> float:
    s, m, n = _svals(w)
    big, beta = max(m, n), min(m, n) / max(m, n)
    sigma = np.median(s) / np.sqrt(big * ref_mp_median(beta))
    eps = sigma * np.sqrt(big) * (1 + np.sqrt(beta))
    signal, noise = s[s > eps].sum(), s[s <= eps].sum()
    if signal == 0:
        return 0.0
    return math.inf if noise == 0 else float(signal / noise)


def _noise(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _low_rank(m: int, n: int, rank: int, strength: float, noise: float = 1.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, v = torch.randn(m, rank, generator=g), torch.randn(rank, n, generator=g)
    return strength * (u @ v) / math.sqrt(rank) + noise * torch.randn(m, n, generator=g)


MATRICES = {
    "noise-tall": _noise(300, 100),
    "noise-wide": _noise(80, 240, seed=1),
    "noise-square": _noise(150, 150, seed=2),
    "lowrank-tall": _low_rank(300, 100, 4, 3.0),
    "lowrank-square": _low_rank(128, 128, 8, 2.0, seed=3),
    "conv": _noise(16, 8, 3, 3, seed=4),
    "identity": torch.eye(6),
    "row": _noise(1, 50, seed=5),
}


# ----------------------------------------------------------------------------- formulas
@pytest.mark.parametrize("key", MATRICES)
def test_spectrum_mode_matches_reference(key):
    w = MATRICES[key]
    assert layer_snr(w, mode="spectrum") == pytest.approx(ref_spectrum(w.numpy()), rel=1e-4)


@pytest.mark.parametrize("key", MATRICES)
def test_mp_mode_matches_reference(key):
    w = MATRICES[key]
    assert layer_snr(w, mode="mp") == pytest.approx(ref_mp(w.numpy()), rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("shape", [(300, 100), (80, 240), (150, 150)])
def test_mp_mode_scores_pure_noise_near_zero_and_low_rank_high(shape):
    m, n = shape
    assert layer_snr(_noise(m, n, seed=7), mode="mp") < 0.05
    assert layer_snr(_low_rank(m, n, 4, 3.0, seed=7), mode="mp") > 0.5


def test_mp_mode_is_scale_free_and_spectrum_mode_divides_by_the_top_value():
    w = MATRICES["lowrank-tall"]
    assert layer_snr(10 * w, mode="mp") == pytest.approx(layer_snr(w, mode="mp"), rel=1e-5)
    assert layer_snr(10 * w, mode="spectrum") == pytest.approx(layer_snr(w, mode="spectrum") / 10, rel=1e-5)


def test_conv_kernels_are_read_as_out_by_in_k_k():
    w = MATRICES["conv"]
    for mode in ("spectrum", "mp"):
        assert layer_snr(w, mode=mode) == layer_snr(w.reshape(16, 72), mode=mode)
        assert layer_snr(w, mode=mode) != pytest.approx(layer_snr(w.permute(2, 3, 0, 1).reshape(9, -1), mode=mode))


def test_zero_below_sum_follows_the_tool():
    zero = torch.zeros(5, 4)
    assert layer_snr(zero, mode="spectrum") == math.inf  # the tool: noise sum 0 -> inf
    assert layer_snr(zero, mode="mp") == 0.0  # no signal at all
    assert layer_snr(torch.eye(6), mode="spectrum") == pytest.approx(6.0)  # empty noise set counts as 1


def test_low_precision_and_other_dtypes_are_scored_in_float32():
    w = MATRICES["lowrank-square"]
    assert layer_snr(w.to(torch.bfloat16), mode="mp") == pytest.approx(layer_snr(w.to(torch.bfloat16).float(), mode="mp"))
    assert layer_snr(w.double(), mode="spectrum") == layer_snr(w, mode="spectrum")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_svd_runs_on_the_tensors_device():
    w = MATRICES["lowrank-tall"]
    for mode in ("spectrum", "mp"):
        assert layer_snr(w.cuda(), mode=mode) == pytest.approx(layer_snr(w, mode=mode), rel=1e-3)


# ----------------------------------------------------------------------------- types and selection
def test_layer_type():
    assert layer_type("encoder.layer.3.attention.self.query.weight") == "attention.self.query"
    assert layer_type("model.layers.0.mlp.up_proj.weight") == "mlp.up_proj"
    assert layer_type("embeddings.word_embeddings.weight") == "embeddings.word_embeddings"
    assert layer_type("pooler.dense.weight") == "pooler.dense"
    assert layer_type("classifier.1.weight") == "classifier"
    assert layer_type("features.3.conv.0.0.weight") == "conv.0.0"
    assert layer_type("weight") == "weight"


N_LAYERS = 12
TYPES = ("attention.self.query", "attention.self.key", "intermediate.dense", "output.dense")


def _bert_like(strengths: dict[str, list[float]]) -> dict[str, torch.Tensor]:
    """State dict with BERT's names; layer i of a type has signal strengths[type][i]."""
    sd: dict[str, torch.Tensor] = {"embeddings.word_embeddings.weight": _noise(50, 16, seed=99)}
    for i in range(N_LAYERS):
        for j, t in enumerate(TYPES):
            sd[f"encoder.layer.{i}.{t}.weight"] = _low_rank(32, 16, 2, strengths[t][i], seed=100 * i + j)
            sd[f"encoder.layer.{i}.{t}.bias"] = torch.zeros(32)
        sd[f"encoder.layer.{i}.output.LayerNorm.weight"] = torch.ones(32)
    return sd


def _strengths(seed: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    # Geometrically spaced strengths, so the (scaled) SNR ranking is the strength ranking.
    return {t: list(0.2 * 1.5 ** rng.permutation(N_LAYERS)) for t in TYPES}


@pytest.mark.parametrize("mode", ["spectrum", "mp"])
def test_top_fraction_per_type(mode):
    strengths = _strengths(0)
    sd = _bert_like(strengths)
    table = SpectrumSelector(fraction=0.25, mode=mode).scan(sd)
    assert {r.type for r in table} == set(TYPES) | {"embeddings.word_embeddings"}
    assert all(r.shape in ((32, 16), (50, 16)) for r in table)  # 1-D tensors skipped
    ref = ref_spectrum if mode == "spectrum" else ref_mp
    for t in TYPES:
        chosen = sorted(int(r.name.split(".")[2]) for r in table if r.type == t and r.selected)
        snrs = [ref(sd[f"encoder.layer.{i}.{t}.weight"].numpy()) for i in range(N_LAYERS)]
        assert chosen == sorted(np.argsort(snrs)[-3:]), t  # floor(0.25 * 12) = 3
        if mode == "mp":  # the properly scaled score ranks by signal strength
            assert chosen == sorted(np.argsort(strengths[t])[-3:]), t
    assert [r.selected for r in table if r.type == "embeddings.word_embeddings"] == [True]  # at least one per type


def test_table_order_follows_the_tool():
    table = SpectrumSelector().scan(_bert_like(_strengths(1)))
    types = list(dict.fromkeys(r.type for r in table))
    assert types == [
        "attention.self.key",
        "attention.self.query",
        "embeddings.word_embeddings",
        "intermediate.dense",
        "output.dense",
    ]
    query = [r.name for r in table if r.type == "attention.self.query"]
    assert query == [f"encoder.layer.{i}.attention.self.query.weight" for i in range(N_LAYERS)]  # 2 before 10
    ranked = rank_by_type(table)["attention.self.query"]
    assert [r.snr for r in ranked] == sorted((r.snr for r in ranked), reverse=True)
    assert {r.name for r in ranked[:3]} == {r.name for r in table if r.type == "attention.self.query" and r.selected}


@pytest.mark.parametrize(("fraction", "n", "kept"), [(0.25, 3, 1), (0.3, 10, 3), (0.29, 100, 29), (1.0, 4, 4), (0.5, 5, 2)])
def test_rounding_is_floor_with_at_least_one(fraction, n, kept):
    sd = {f"blocks.{i}.proj.weight": _low_rank(12, 10, 2, 1.0 + i, seed=i) for i in range(n)}
    table = SpectrumSelector(fraction=fraction, mode="mp").scan(sd)
    assert sum(r.selected for r in table) == kept


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.layers = nn.ModuleList(_Block() for _ in range(8))
        self.head = nn.Linear(16, 20)
        self.head.weight = self.embed.weight  # tied


def test_select_returns_narrower_spec_with_biases():
    torch.manual_seed(0)
    net = _Net()
    spec = ParamSpec.from_module(net)
    sel = SpectrumSelector(fraction=0.25)
    assert isinstance(sel, Selector)
    table = sel.scan(net)
    assert [r.name for r in table if r.type == "embed"] == ["embed.weight"]  # the tied head is scored once
    chosen = [r.name for r in table if r.selected]
    narrow = sel.select(net, spec)
    expected = {n for n in chosen} | {n.replace(".weight", ".bias") for n in chosen if n.startswith("layers.")}
    assert {t.name for t in narrow.vector_tensors} == expected
    assert len([n for n in chosen if n.startswith("layers.")]) == 2
    assert narrow.numel == sum(narrow[n].numel for n in expected)
    assert narrow["head.weight"].tied_to == "embed.weight" and narrow["head.weight"].role == "vector"
    assert all(t.role == "frozen" for t in narrow.tensors if t.name not in expected and t.tied_to is None)
    no_bias = SpectrumSelector(fraction=0.25, include_bias=False).select(net, spec, table=table)
    assert {t.name for t in no_bias.vector_tensors} == set(chosen)
    # The narrowed model round-trips through the narrower spec.
    flat, extras = narrow.flatten([net.state_dict()])
    restored = narrow.unflatten(flat, extras=extras, base=net.state_dict())[0]
    assert all(torch.equal(restored[k], v) for k, v in net.state_dict().items())


def test_select_stays_within_an_already_narrowed_spec():
    net = _Net()
    spec = ParamSpec.from_module(net).select(include=["layers.*.query.*"])
    narrow = SpectrumSelector(fraction=0.5).select(net, spec)
    assert {t.name.rsplit(".", 1)[0] for t in narrow.vector_tensors} <= {f"layers.{i}.query" for i in range(8)}
    assert len(narrow.vector_tensors) == 8  # 4 weights + 4 biases


# ----------------------------------------------------------------------------- streaming
class _Recording:
    """Wraps safetensors.safe_open: records reads and checks that earlier tensors are gone."""

    def __init__(self, real):
        self.real = real
        self.reads: list[str] = []
        self.alive_at_read: list[int] = []
        self.refs: list[weakref.ref] = []

    def __call__(self, *args, **kwargs):
        outer = self
        handle = self.real(*args, **kwargs)

        class Handle:
            def __enter__(self):
                self.f = handle.__enter__()
                return self

            def __exit__(self, *exc):
                return handle.__exit__(*exc)

            def keys(self):
                return self.f.keys()

            def get_slice(self, name):
                return self.f.get_slice(name)

            def get_tensor(self, name):
                outer.alive_at_read.append(sum(r() is not None for r in outer.refs))
                t = self.f.get_tensor(name)
                outer.reads.append(name)
                outer.refs.append(weakref.ref(t))
                return t

        return Handle()


@pytest.mark.parametrize("mode", ["spectrum", "mp"])
def test_scan_file_streams_and_matches_module_scan(mode, tmp_path, monkeypatch):
    sd = _bert_like(_strengths(2))
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(sd, str(path))
    from_module = SpectrumSelector(mode=mode).scan(sd)

    rec = _Recording(safetensors.safe_open)
    monkeypatch.setattr(safetensors, "safe_open", rec)
    for loader in ("load_file", "load"):
        monkeypatch.setattr(safetensors.torch, loader, lambda *a, **k: pytest.fail("loaded the whole file"))
    from_file = SpectrumSelector(mode=mode).scan(path)

    assert from_file == from_module
    matrices = [k for k, v in sd.items() if v.ndim == 2]
    assert sorted(rec.reads) == sorted(matrices)  # each matrix read once, 1-D tensors never
    assert rec.alive_at_read == [0] * len(matrices)  # the previous tensor was freed before each read
    assert all(r() is None for r in rec.refs)


def test_select_from_a_file(tmp_path):
    net = _Net()
    sd = {k: v.clone() for k, v in net.state_dict().items() if k != "head.weight"}
    path = tmp_path / "net.safetensors"
    safetensors.torch.save_file(sd, str(path))
    spec = ParamSpec.from_state_dict(sd)
    sel = SpectrumSelector()
    assert sel.select(path, spec) == sel.select(sd, spec)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, True, "0.5"])
def test_bad_fraction(fraction):
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        SpectrumSelector(fraction=fraction)


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown SNR mode 'svd'; expected one of"):
        SpectrumSelector(mode="svd")
    with pytest.raises(ValueError, match="unknown SNR mode"):
        layer_snr(torch.eye(3), mode="svd")


def test_not_a_safetensors_file(tmp_path):
    bad = tmp_path / "model.safetensors"
    torch.save({"w": torch.eye(3)}, bad)  # a pickle, not safetensors
    with pytest.raises(ValueError, match="expected a safetensors file"):
        SpectrumSelector().scan(bad)
    with pytest.raises(FileNotFoundError, match="no safetensors file"):
        SpectrumSelector().scan(tmp_path / "missing.safetensors")


def test_other_bad_input():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        layer_snr(torch.ones(4))
    with pytest.raises(NonFiniteWeightsError, match="'a.weight'"):
        SpectrumSelector().scan({"a.weight": torch.full((3, 3), math.nan)})
    with pytest.raises(ValueError, match="no floating tensor with 2 or more dimensions"):
        SpectrumSelector().scan({"a.bias": torch.ones(3)})
    with pytest.raises(SpecMismatchError, match="not in the scanned"):
        SpectrumSelector().scan({"a.weight": torch.eye(3)}, names=["b.weight"])
    with pytest.raises(SpecMismatchError, match="not in the spec's vector"):
        spec = ParamSpec.from_state_dict({"a.weight": torch.eye(3)})
        SpectrumSelector().select({"a.weight": torch.eye(3)}, spec, table=[LayerSNR("b.weight", "b", (3, 3), 1.0, True)])
    with pytest.raises(TypeError, match="expected an nn.Module, a state dict or a safetensors path"):
        SpectrumSelector().scan([torch.eye(3)])
