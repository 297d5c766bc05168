"""Each prior's sampling options: documented, typed, and an unknown or wrong one named in the error."""

from __future__ import annotations

import pytest
import torch

from paramgen.priors import DiffusionPrior, GPTPrior, KDEPrior


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def ddpm() -> DiffusionPrior:
    return DiffusionPrior(shape=(2, 8), cond_dim=3, timesteps=20, base_channels=8, channel_mults=(1,), ema_decay=0.0)


@pytest.fixture(scope="module")
def gpt() -> GPTPrior:
    return GPTPrior(vocab_size=8, length=6, cond_dim=3, d_model=16, heads=2, layers=1)


@pytest.fixture(scope="module")
def kde() -> KDEPrior:
    return KDEPrior().fit(torch.randn(6, 2, 8), torch.eye(3).repeat(2, 1))


def test_sample_options_are_the_documented_keywords():
    import inspect

    for cls in (DiffusionPrior, GPTPrior, KDEPrior):
        params = inspect.signature(cls.sample).parameters
        kw = [k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and k != "generator"]
        assert tuple(kw) == cls.SAMPLE_OPTIONS, cls.__name__
        doc = cls.sample.__doc__ or ""
        assert all(f"{k}:" in doc for k in kw), cls.__name__


def test_diffusion_prior_refuses_a_gpt_option_and_lists_its_own(ddpm):
    with pytest.raises(TypeError, match=r"DiffusionPrior\.sample got temperature=0\.7; valid options: sampler, steps, guidance_scale, eta"):
        ddpm.sample(2, torch.zeros(2, 3), temperature=0.7)


def test_gpt_prior_refuses_a_diffusion_option_and_lists_its_own(gpt):
    with pytest.raises(TypeError, match=r"GPTPrior\.sample got sampler='ddim', steps=5; valid options: temperature, top_k"):
        gpt.sample(2, torch.zeros(2, 3), sampler="ddim", steps=5)


def test_kde_prior_has_no_options(kde):
    with pytest.raises(TypeError, match=r"KDEPrior\.sample got steps=50; valid options: none"):
        kde.sample(2, torch.eye(3)[:2], steps=50)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(sampler="euler"), r"DiffusionPrior\.sample: sampler must be 'ddpm' or 'ddim', got 'euler'"),
        (dict(sampler="ddim", steps=0), r"steps must be an int in \[1, timesteps=20\], got 0"),
        (dict(sampler="ddim", steps=21), r"steps must be an int in \[1, timesteps=20\], got 21"),
        (dict(sampler="ddim", steps=2.5), r"steps must be an int in \[1, timesteps=20\], got 2\.5"),
        (dict(guidance_scale="2"), r"guidance_scale must be a finite number, got '2'"),
        (dict(guidance_scale=float("nan")), r"guidance_scale must be a finite number, got nan"),
        (dict(sampler="ddim", eta=1.5), r"eta must be a number in \[0, 1\], got 1\.5"),
        (dict(sampler="ddim", eta=None), r"eta must be a number in \[0, 1\], got None"),
    ],
)
def test_diffusion_prior_wrong_option_values(ddpm, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ddpm.sample(2, torch.zeros(2, 3), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(temperature=0), r"GPTPrior\.sample: temperature must be a finite number > 0, got 0"),
        (dict(temperature="hot"), r"GPTPrior\.sample: temperature must be a finite number > 0, got 'hot'"),
        (dict(top_k=0), r"GPTPrior\.sample: top_k must be None or an int in \[1, vocab_size=8\], got 0"),
        (dict(top_k=2.0), r"top_k must be None or an int in \[1, vocab_size=8\], got 2\.0"),
    ],
)
def test_gpt_prior_wrong_option_values(gpt, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gpt.sample(2, torch.zeros(2, 3), **kwargs)


def test_ddim_eta_is_used(ddpm):
    cond = torch.zeros(2, 3)
    a = ddpm.sample(2, cond, generator=_gen(1), sampler="ddim", steps=5)
    b = ddpm.sample(2, cond, generator=_gen(1), sampler="ddim", steps=5, eta=0.0)
    c = ddpm.sample(2, cond, generator=_gen(1), sampler="ddim", steps=5, eta=1.0)
    assert torch.equal(a, b)  # eta = 0 is the default, deterministic DDIM
    assert not torch.allclose(a, c)


def test_generator_sample_passes_options_to_the_prior_and_the_prior_names_the_bad_one():
    from paramgen import Generator, ModelVectorizer, ParamSpec
    from paramgen.tokenizers import IdentityTokenizer

    spec = ParamSpec.from_state_dict({"w": torch.zeros(2, 4)})
    prior = DiffusionPrior(shape=(1, 8), timesteps=10, base_channels=8, channel_mults=(1,), ema_decay=0.0)
    gen = Generator(vectorizer=ModelVectorizer(spec), tokenizer=IdentityTokenizer(rows=1, width=8), prior=prior)
    gen.fit(torch.randn(4, 8), tokenizer_steps=0, prior_steps=1, batch_size=2, generator=_gen(0), progress=False)
    assert len(gen.sample(None, 2, generator=_gen(0), sampler="ddim", steps=3, eta=0.5)) == 2
    with pytest.raises(TypeError, match=r"DiffusionPrior\.sample got top_k=5; valid options: sampler, steps, guidance_scale, eta"):
        gen.sample(None, 2, top_k=5)
