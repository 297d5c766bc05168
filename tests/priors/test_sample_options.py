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
        (dict(sampler="ddim", eta="0.5"), r"eta must be a number in \[0, 1\], got '0\.5'"),
        (dict(sampler="ddpm", steps=5), r"steps=5 acts with the DDIM sampler only, but this call samples with DDPM \(sampler='ddpm'\)"),
        (dict(sampler="ddpm", eta=0.0), r"eta=0\.0 acts with the DDIM sampler only, but this call samples with DDPM"),
        (dict(sampler="ddim", noise_scale=1.5), r"noise_scale must be a number in \[0, 1\], got 1\.5"),
        (dict(sampler="ddim", noise_scale=float("nan")), r"noise_scale must be a number in \[0, 1\], got nan"),
        (dict(sampler="ddpm", noise_scale=0.5), r"noise_scale=0\.5 acts with the DDIM sampler only"),
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


def test_ddim_noise_scale_scales_x_T(ddpm):
    cond = torch.randn(2, 3, generator=_gen(5))
    plain = ddpm.sample(2, cond, generator=_gen(1), sampler="ddim", steps=5)
    one = ddpm.sample(2, cond, generator=_gen(1), sampler="ddim", steps=5, noise_scale=1.0)
    assert torch.equal(plain, one)  # scale 1 is an ordinary sample, bit for bit
    zero_a = ddpm.sample(2, cond, generator=_gen(1), sampler="ddim", steps=5, noise_scale=0.0)
    zero_b = ddpm.sample(2, cond, generator=_gen(2), sampler="ddim", steps=5, noise_scale=0.0)
    assert torch.equal(zero_a, zero_b) and not torch.equal(zero_a, plain)  # from x_T = 0: the noise does not matter
    half = ddpm.sample(2, cond, generator=_gen(1), sampler="ddim", steps=5, noise_scale=0.5)
    assert not torch.equal(half, plain) and not torch.equal(half, zero_a)


def test_generator_sample_passes_options_to_the_prior_and_the_prior_names_the_bad_one():
    from paramgen import Generator, ModelVectorizer, ParamSpec, fit
    from paramgen.tokenizers import IdentityTokenizer

    spec = ParamSpec.from_state_dict({"w": torch.zeros(2, 4)})
    prior = DiffusionPrior(shape=(1, 8), timesteps=10, base_channels=8, channel_mults=(1,), ema_decay=0.0)
    gen = Generator(vectorizer=ModelVectorizer(spec), tokenizer=IdentityTokenizer(rows=1, width=8), prior=prior)
    fit(gen, torch.randn(4, 8), tokenizer_steps=0, prior_steps=1, batch_size=2, generator=_gen(0), progress=False)
    assert len(gen.sample(None, 2, generator=_gen(0), sampler="ddim", steps=3, eta=0.5)) == 2
    with pytest.raises(TypeError, match=r"DiffusionPrior\.sample got top_k=5; valid options: sampler, steps, guidance_scale, eta"):
        gen.sample(None, 2, top_k=5)


# --- no option is ignored: each one given changes the samples, or raises naming it -------
@pytest.fixture(scope="module")
def guided() -> DiffusionPrior:
    """A prior with a null condition (guidance acts) whose weights are not the zero init."""
    torch.manual_seed(0)
    prior = DiffusionPrior(shape=(2, 8), cond_dim=3, timesteps=20, base_channels=8, channel_mults=(1,), ema_decay=0.0, cond_dropout=0.2)
    with torch.no_grad():  # the last convolution starts at zero: make eps depend on the condition
        for p in prior.unet.final_conv.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=_gen(5)))
    return prior


@pytest.fixture(scope="module")
def sharp_gpt() -> GPTPrior:
    """A GPT whose logits are not all near zero (the N(0, 0.02) init samples nearly uniformly,
    where a temperature may change no token)."""
    torch.manual_seed(0)
    prior = GPTPrior(vocab_size=8, length=6, cond_dim=3, d_model=16, heads=2, layers=1)
    with torch.no_grad():
        prior.head.weight.mul_(100.0)
    return prior


OPTION_VALUES = {
    "sampler": ["ddpm", "ddim"],
    "steps": [3, 20],
    "guidance_scale": [0.0, 3.0],
    "eta": [0.5, 1.0],
    "temperature": [0.3, 3.0],
    "top_k": [1, 2],
}


def _prior_cases() -> list[tuple[str, dict]]:
    """Base calls each option is added to: every sampler a diffusion call can end up with."""
    return [("guided", {}), ("guided", {"sampler": "ddpm"}), ("guided", {"sampler": "ddim"}), ("guided", {"sampler": "ddim", "steps": 5}), ("sharp_gpt", {}), ("kde", {})]


@pytest.mark.parametrize(("prior_name", "base"), _prior_cases(), ids=lambda v: str(v))
def test_every_sampling_option_acts_or_raises_naming_it(prior_name: str, base: dict, request: pytest.FixtureRequest) -> None:
    """The class of "sample(..., steps=20) without sampler='ddim' is DDPM-1000": a keyword
    accepted and then ignored. For every option of every prior, a call with it either
    raises an error naming it or samples something else than the call without it."""
    prior = request.getfixturevalue(prior_name)
    cond = torch.eye(3)[[0, 1]]
    reference = prior.sample(2, cond, generator=_gen(3), **base)
    checked = 0
    for name, values in OPTION_VALUES.items():
        if name in base:
            continue
        for value in values:
            kwargs = {**base, name: value}
            try:
                out = prior.sample(2, cond, generator=_gen(3), **kwargs)
            except (TypeError, ValueError) as e:
                assert f"{name}=" in str(e), f"{type(prior).__name__}.sample({kwargs}) raised without naming {name}: {e}"
                continue
            default = getattr(prior, name, None)
            if name == "steps" and base.get("sampler", prior.sampler) == "ddim":
                default = prior.ddim_steps
            if value == default:  # the value the call without it uses: nothing to change
                continue
            assert not torch.equal(out, reference), f"{type(prior).__name__}.sample ignored {name}={value!r} (with {base})"
            checked += 1
    assert checked or prior_name == "kde"


def test_the_default_sampler_is_ddim_with_50_steps() -> None:
    prior = DiffusionPrior(shape=(1, 4), timesteps=1000, base_channels=8, channel_mults=(1,), ema_decay=0.0)
    assert (prior.sampler, prior.ddim_steps) == ("ddim", 50)
    with torch.no_grad():
        for p in prior.unet.final_conv.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=_gen(5)))
    default = prior.sample(2, generator=_gen(1))
    assert torch.equal(default, prior.sample(2, generator=_gen(1), sampler="ddim", steps=50))
    assert not torch.equal(default, prior.sample(2, generator=_gen(1), sampler="ddpm"))
    # A chain shorter than 50 steps takes all its steps; a saved config keeps its sampler.
    assert DiffusionPrior(shape=(1, 4), timesteps=20, base_channels=8).ddim_steps == 20
    old = DiffusionPrior.from_config({**prior.config(), "sampler": "ddpm", "ddim_steps": 50})
    assert (old.sampler, old.ddim_steps) == ("ddpm", 50)


def test_steps_without_a_sampler_act_on_the_default_ddim_and_raise_on_a_ddpm_default() -> None:
    """The issue's case: ``steps=20`` alone was DDPM-1000, identical to no steps at all."""
    torch.manual_seed(0)
    prior = DiffusionPrior(shape=(1, 4), timesteps=100, base_channels=8, channel_mults=(1,), ema_decay=0.0)
    with torch.no_grad():
        for p in prior.unet.final_conv.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=_gen(5)))
    assert torch.equal(prior.sample(2, generator=_gen(1), steps=20), prior.sample(2, generator=_gen(1), sampler="ddim", steps=20))
    assert not torch.equal(prior.sample(2, generator=_gen(1), steps=20), prior.sample(2, generator=_gen(1)))
    ddpm_default = DiffusionPrior.from_config({**prior.config(), "sampler": "ddpm"})
    with pytest.raises(ValueError, match=r"steps=20 acts with the DDIM sampler only, but this call samples with DDPM \(the prior's default sampler\); pass sampler='ddim', or drop steps"):
        ddpm_default.sample(2, steps=20)
    with pytest.raises(ValueError, match=r"eta=0\.5 acts with the DDIM sampler only"):
        ddpm_default.sample(2, eta=0.5)
