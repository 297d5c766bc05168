"""The device contract: every tensor a component makes follows its inputs or parameters.

Each case below builds a component on the CPU, moves it (and its inputs) to a fake device
(`fake_device`: CPU data that reports another device) and runs its verbs. Any CPU tensor
of one or more dimensions meeting a device tensor (noise drawn without a device, an
index made with ``torch.tensor(...)``, statistics left on the CPU) raises, as would a
draw onto the device from a CPU generator; and every tensor returned must be on the
device. Stochastic verbs run with a seeded CPU ``torch.Generator`` and with none.

A new component adds one case: a function ``(dev, generator) -> outputs`` in `CASES`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from fake_device import FAKE, DeviceMismatch, fake_device, tensors_in
from torch import nn

from paramgen.conditioners import (
    ImageSetConditioner,
    IndexConditioner,
    OneHotConditioner,
    OrderedSetConditioner,
    align_to_latents,
    retrieval_accuracy,
)
from paramgen.conditioners.align import LatentProjection
from paramgen.normalize import GlobalScale, PerLayerZScore, PerTaskZScore
from paramgen.predictor import AccuracyPredictor, fit_predictor
from paramgen.priors import DiffusionPrior, GPTPrior, KDEPrior
from paramgen.spec import ParamSpec
from paramgen.tokenizers import GumbelVQTokenizer, IdentityTokenizer, VAETokenizer
from paramgen.vectorize import ChunkVectorizer, FamilyVectorizer, LayerVectorizer, ModelVectorizer

Case = Callable[[torch.device, "torch.Generator | None"], Any]


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def _flat(spec: ParamSpec, n: int = 4) -> torch.Tensor:
    torch.manual_seed(0)
    return spec.flatten([_net().state_dict() for _ in range(n)])[0]  # (n, D), running_var > 0


# --- tokenizers ---------------------------------------------------------------------------
def vae_verbs(dev, gen):
    vae = VAETokenizer(rows=2, width=12, latent_channels=2, latent_length=4, hidden_channels=8, num_down=1).to(dev)
    x = torch.randn(3, 2, 12).to(dev)
    enc = vae.encode(x)
    return enc, vae.decode(enc.latents), vae.eval().loss(x, generator=gen)


def vae_noisy_loss(dev, gen):
    vae = VAETokenizer(rows=2, width=12, latent_channels=2, latent_length=4, hidden_channels=8, num_down=1,
                       input_noise=0.1, latent_noise=0.1, predictor_weight=1.0).to(dev)  # fmt: skip
    predictor = AccuracyPredictor(rows=2, width=12, hidden=8).to(dev)
    mask = torch.ones(2, 12, dtype=torch.bool)  # the vectorizer's (N, C) mask, still on the CPU
    out = vae.train().loss(torch.randn(3, 2, 12).to(dev), mask=mask.to(dev), generator=gen, predictor=predictor)
    out.loss.backward()
    return out


def vq_verbs(dev, gen):
    vq = GumbelVQTokenizer(rows=3, width=8, codebook_size=16, tokens_per_chunk=2, code_dim=4, hidden=16)
    with torch.no_grad():
        vq.code_usage[:4] = 0.0  # dead codes: the training loss re-seeds them
    vq = vq.to(dev)
    x = torch.randn(5, 3, 8).to(dev)
    train = vq.train().loss(x, mask=torch.ones(3, 8, dtype=torch.bool).to(dev), generator=gen)
    enc = vq.eval().encode(x)
    return train, enc, vq.decode(enc.latents), vq.decode_indices(enc.indices), vq.loss(x)


def identity_verbs(dev, gen):
    tok = IdentityTokenizer(rows=2, width=3)
    x = torch.randn(4, 2, 3).to(dev)
    return tok.encode(x), tok.decode(x), tok.loss(x, generator=gen)


# --- priors -------------------------------------------------------------------------------
def _diffusion(dev):
    return DiffusionPrior(shape=(2, 6), cond_dim=3, timesteps=8, base_channels=8, channel_mults=(1, 2),
                          dropout=0.1, cond_dropout=0.5, guidance_scale=2.0).to(dev)  # fmt: skip


def diffusion_loss(dev, gen):
    prior = _diffusion(dev).train()
    loss = prior.loss(torch.randn(4, 2, 6).to(dev), torch.randn(4, 3).to(dev), generator=gen)
    loss.backward()
    prior.update_ema()
    return loss


def diffusion_sample(dev, gen):
    prior = _diffusion(dev)
    cond = torch.randn(3, 3)  # conditions on the CPU are moved to the prior
    return (
        prior.sample(3, cond.to(dev), generator=gen, sampler="ddpm"),
        prior.sample(3, cond, generator=gen, sampler="ddim", steps=4),
        prior.sample(3, cond.to(dev), generator=gen, sampler="ddim", steps=4, guidance_scale=1.0),
    )


def _gpt(dev):
    return GPTPrior(vocab_size=8, length=10, cond_dim=3, context=4, d_model=16, layers=1, heads=2, dropout=0.1).to(dev)


def gpt_loss(dev, gen):
    prior = _gpt(dev).train()
    loss = prior.loss(torch.randint(0, 8, (4, 10)).to(dev), torch.randn(4, 3).to(dev), generator=gen)
    loss.backward()
    return loss


def gpt_sample(dev, gen):
    prior = _gpt(dev)
    cond = torch.randn(2, 3).to(dev)
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]]).to(dev)
    return prior.sample(2, cond, generator=gen, top_k=3), prior.generate(2, cond, prompt=prompt, generator=gen)


def kde_fit_sample(dev, gen):
    latents = torch.randn(6, 2, 3)
    cond = torch.eye(2).repeat(3, 1)
    fitted_there = KDEPrior().fit(latents.to(dev), cond.to(dev))
    moved = KDEPrior(bandwidth=0.5).fit(latents, cond).to(dev)
    unconditional = KDEPrior().fit(latents, None).to(dev)
    return (
        fitted_there.sample(3, cond[:3].to(dev), generator=gen),
        moved.sample(3, cond[:3], generator=gen),
        unconditional.sample(2, None, generator=gen),
    )


# --- normalizers and vectorizers ----------------------------------------------------------
def per_task_zscore(dev, gen):
    flat = _flat(ParamSpec.from_module(_net())).to(dev)
    tasks = ["a", "a", "b", "b"]
    fitted_there = PerTaskZScore().fit(flat, tasks=tasks)
    moved = PerTaskZScore(unknown="global").fit(flat.cpu(), tasks=tasks).to(dev, torch.float32)
    z = fitted_there.transform(flat, tasks=tasks)
    return z, fitted_there.inverse(z, tasks=tasks), moved.transform(flat, tasks=["a", "b", "c", "c"]), moved.mean


def per_layer_zscore(dev, gen):
    spec = ParamSpec.from_module(_net())
    flat = _flat(spec).to(dev)
    fitted_there = PerLayerZScore(spec).fit(flat)
    moved = PerLayerZScore(spec).fit(flat.cpu()).to(dev)
    z = fitted_there.transform(flat)
    return z, fitted_there.inverse(z), moved.inverse(moved.transform(flat)), moved.std


def _global_scale(dev, options):
    spec = ParamSpec.from_module(_net())
    flat = _flat(spec).to(dev)
    fitted_there = GlobalScale(**options).fit(flat, spec=spec)
    moved = GlobalScale(**options).fit(flat.cpu(), spec=spec).to(dev)
    z = fitted_there.transform(flat, spec=spec)
    return z, fitted_there.inverse(z, spec=spec), moved.inverse(moved.transform(flat, spec=spec), spec=spec), moved.scale


def global_scale(dev, gen):
    return _global_scale(dev, {})


def global_scale_log_fan_in(dev, gen):
    return _global_scale(dev, {"log": ("*running_var",), "fan_in": True})


def vectorizers(dev, gen):
    spec = ParamSpec.from_module(_net())
    flat = _flat(spec).to(dev)
    outs = []
    for vec in (ChunkVectorizer(spec, chunk_size=5), LayerVectorizer(spec, chunk_size=4), LayerVectorizer(spec), ModelVectorizer(spec, length=64)):
        batch = vec.from_flat(flat)  # follows the input without `to`
        outs += [batch.values, batch.mask, vec.unpack(vec.pack(flat))]
        vec.to(dev)
        outs += [vec.mask, vec.layer, vec.chunk, vec.unpack(batch.values)]
    return outs


def family_vectorizer(dev, gen):
    small, big = ParamSpec.from_module(nn.Linear(3, 2)), ParamSpec.from_module(_net())
    fam = FamilyVectorizer.chunked({"small": small, "big": big}, chunk_size=4).to(dev)
    flat = torch.randn(2, small.numel).to(dev)
    rows = fam.pack(flat, "small")
    return rows, fam.unpack(rows, "small"), fam.mask_of("small"), fam.mask_of("big")


# --- conditioners and alignment -----------------------------------------------------------
def index_conditioners(dev, gen):
    index, onehot = IndexConditioner(["a", "b"], dim=4).to(dev), OneHotConditioner(["a", "b"]).to(dev)
    by_int = IndexConditioner([3, 5], dim=2).to(dev)
    return index(["b", "a"]), onehot(["a", "b", "a"]), by_int(torch.tensor([5, 3]).to(dev))


def imageset_conditioners(dev, gen):
    outs = []
    for variant in ("set_transformer", "mlp"):
        cond = ImageSetConditioner(feature_dim=6, dim=8, hidden=16, heads=2, num_inducing=2, variant=variant).to(dev)
        datasets = [torch.randn(3, 4, 6), torch.randn(2, 5, 6).to(dev)]  # CPU features are moved in
        outs.append(cond(datasets))
    ordered = OrderedSetConditioner(feature_dim=6, num_classes=3, per_class=2, hidden=8).to(dev)
    outs.append(ordered([torch.randn(3, 4, 6), torch.randn(3, 2, 6).to(dev)]))
    return outs


def alignment(dev, gen):
    cond = IndexConditioner(["a", "b", "c"], dim=4).to(dev)
    proj = LatentProjection(6, 4)
    latents = torch.randn(6, 2, 3)  # latents on the CPU are moved to the conditioner
    losses = align_to_latents(cond, ["a", "b", "c"] * 2, latents, groups=["a", "b", "c"] * 2, steps=3,
                              projection=proj, generator=gen)  # fmt: skip
    assert len(losses) == 3 and all(isinstance(v, float) for v in losses)
    return retrieval_accuracy(cond, ["a", "b", "c"] * 2, latents.to(dev), proj), proj.latent_proj.weight


def predictor_fit(dev, gen):
    pred = AccuracyPredictor(rows=2, width=3, hidden=8).to(dev)
    losses = fit_predictor(pred, torch.randn(8, 2, 3), torch.rand(8), steps=3, generator=gen)
    assert len(losses) == 3
    return pred(torch.randn(4, 2, 3).to(dev))


CASES: dict[str, Case] = {
    f.__name__: f
    for f in (
        vae_verbs, vae_noisy_loss, vq_verbs, identity_verbs, diffusion_loss, diffusion_sample, gpt_loss, gpt_sample,
        kde_fit_sample, per_task_zscore, per_layer_zscore, global_scale, global_scale_log_fan_in, vectorizers,
        family_vectorizer, index_conditioners, imageset_conditioners, alignment, predictor_fit,
    )
}  # fmt: skip


@pytest.mark.parametrize("generator", ["cpu", None])
@pytest.mark.parametrize("case", list(CASES))
def test_tensors_follow_the_device(case: str, generator: str | None) -> None:
    torch.manual_seed(0)
    gen = None if generator is None else torch.Generator().manual_seed(0)
    with fake_device() as dev:
        outputs = tensors_in(CASES[case](dev, gen))
    assert outputs, "a case must return the tensors it made"
    off = [tuple(t.shape) for t in outputs if t.device != FAKE]
    assert not off, f"{case}: outputs left on the CPU: {off}"


def test_the_fake_device_catches_a_cpu_draw() -> None:
    """The check itself: noise drawn without a device fails, drawn on the input's device passes."""
    with fake_device() as dev:
        x = torch.zeros(2, 3).to(dev)
        with pytest.raises(DeviceMismatch, match="CPU tensors"):
            _ = x + torch.randn(2, 3)
        with pytest.raises(DeviceMismatch, match="CPU torch.Generator"):
            torch.randn(2, 3, generator=torch.Generator(), device=x.device)
        with pytest.raises(DeviceMismatch, match="CPU tensors"):
            _ = x[torch.tensor([1, 0])]  # CUDA would copy the index over; the contract forbids it
        assert (x + torch.randn(2, 3, device=x.device)).device == dev


# --- same seed, same samples (on the CPU) -------------------------------------------------
SAMPLERS: dict[str, Callable[[torch.Generator], torch.Tensor]] = {}


def _sampler(f: Callable[[torch.Generator], torch.Tensor]) -> Callable[[torch.Generator], torch.Tensor]:
    SAMPLERS[f.__name__] = f
    return f


torch.manual_seed(0)
_DIFFUSION, _GPT = _diffusion("cpu"), _gpt("cpu")
_KDE = KDEPrior().fit(torch.randn(6, 2, 3), torch.eye(2).repeat(3, 1))


@_sampler
def ddpm(g):
    return _DIFFUSION.sample(3, torch.ones(3, 3), generator=g, sampler="ddpm")


@_sampler
def ddim(g):
    return _DIFFUSION.sample(3, torch.ones(3, 3), generator=g, sampler="ddim", steps=4)


@_sampler
def gpt(g):
    return _GPT.sample(3, torch.ones(3, 3), generator=g)


@_sampler
def kde(g):
    return _KDE.sample(3, torch.eye(2)[[0, 1, 1]], generator=g)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_same_seed_same_samples(sampler: str) -> None:
    draw = SAMPLERS[sampler]
    a, b = draw(torch.Generator().manual_seed(7)), draw(torch.Generator().manual_seed(7))
    c = draw(torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
