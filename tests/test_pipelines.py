"""The pipeline builders: inferred wiring, the papers' defaults, a local seed, strict options."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import paramgen
from paramgen import FitConfig, Generator, ModelVectorizer, ParamSpec, PerLayerZScore
from paramgen.conditioners import IndexConditioner
from paramgen.pipelines import FIT_CONFIGS, PIPELINES, chunkwise, cond_pdiff, d2nwg, igpg
from paramgen.priors import DiffusionPrior, GPTPrior
from paramgen.tokenizers import GumbelVQTokenizer, VAETokenizer
from paramgen.vectorize import FamilyVectorizer, LayerVectorizer

TASKS = ["digits/0-1", "digits/2-3", "digits/4-5"]

# Small wiring values so that a build takes milliseconds.
SMALL = {
    "d2nwg": dict(latent_length=8, hidden_channels=16, base_channels=16, timesteps=50),
    "cond-pdiff": dict(chunk_size=16, hidden_channels=16, prior_channels=16, timesteps=50),
    "igpg": dict(codebook_size=16, tokens_per_chunk=4, hidden=32, d_model=16, layers=1, heads=2),
    "chunkwise": dict(chunk_size=8, latent_length=8, hidden_channels=8, base_channels=8, timesteps=50, position_dim=8, cond_dim=8),
}


def _state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"0.weight": torch.randn(6, 4, generator=g), "0.bias": torch.randn(6, generator=g), "2.weight": torch.randn(3, 6, generator=g)}


def _spec() -> ParamSpec:
    return ParamSpec.from_state_dict(_state_dict())


def _states(gen: Generator) -> dict[str, dict[str, torch.Tensor]]:
    gen = getattr(gen, "generator", gen)  # a ChunkwiseGenerator: its inner generator
    out = {"tokenizer": gen.tokenizer.state_dict(), "prior": gen.prior.state_dict()}
    if gen.conditioner is not None:
        out["conditioner"] = gen.conditioner.state_dict()
    return out


def _assert_same(a: Generator, b: Generator) -> None:
    sa, sb = _states(a), _states(b)
    assert sa.keys() == sb.keys()
    for part in sa:
        assert sa[part].keys() == sb[part].keys(), part
        for k in sa[part]:
            assert torch.equal(sa[part][k], sb[part][k]), f"{part}.{k}"


def test_pipelines_registry_names_the_four_builders():
    assert PIPELINES == {"d2nwg": d2nwg, "cond-pdiff": cond_pdiff, "igpg": igpg, "chunkwise": chunkwise}
    assert set(FIT_CONFIGS) == set(PIPELINES)


def test_d2nwg_reproduces_the_demo_generator_exactly():
    """``python -m paramgen.demo``'s composition (torch.manual_seed(0), then tokenizer, prior,
    conditioner, normalizer) and ``d2nwg(..., seed=0, <options>)`` give equal weights and configs."""
    spec = _spec()
    torch.manual_seed(0)
    tok = VAETokenizer(rows=1, width=spec.numel, latent_channels=4, latent_length=16, hidden_channels=32)
    demo = Generator(
        vectorizer=ModelVectorizer(spec),
        tokenizer=tok,
        prior=DiffusionPrior(shape=tok.latent_shape, cond_dim=16, base_channels=32, channel_mults=(1, 2), ema_decay=0.99),
        conditioner=IndexConditioner(TASKS, dim=16),
        normalizer=PerLayerZScore(spec),
    )
    torch.manual_seed(123)  # the builder must not depend on the global state
    built = d2nwg(spec, tasks=TASKS, seed=0, latent_length=16, hidden_channels=32, input_noise=0.0, latent_noise=0.0,
                  cond_dim=16, base_channels=32, ema_decay=0.99)  # fmt: skip
    _assert_same(demo, built)
    assert built.tokenizer.config() == demo.tokenizer.config()
    assert built.prior.config() == demo.prior.config()
    assert built.conditioner.config() == demo.conditioner.config()
    assert isinstance(built.normalizer, PerLayerZScore) and isinstance(built.vectorizer, ModelVectorizer)


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_builders_neither_read_nor_change_the_global_rng(name):
    builder, options = PIPELINES[name], SMALL[name]
    torch.manual_seed(7)
    before = torch.get_rng_state()
    a = builder(_spec(), condition="task", tasks=TASKS, seed=3, **options)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(99)  # another global state: the same weights
    b = builder(_spec(), condition="task", tasks=TASKS, seed=3, **options)
    _assert_same(a, b)
    c = builder(_spec(), condition="task", tasks=TASKS, seed=4, **options)
    a, c = getattr(a, "generator", a), getattr(c, "generator", c)  # a ChunkwiseGenerator: its inner generator
    assert not torch.equal(a.prior.state_dict()[next(iter(a.prior.state_dict()))], c.prior.state_dict()[next(iter(c.prior.state_dict()))]) or not torch.equal(
        next(iter(a.tokenizer.parameters())), next(iter(c.tokenizer.parameters()))
    )


def test_seed_none_draws_from_the_global_generator_like_plain_construction():
    torch.manual_seed(5)
    a = d2nwg(_spec(), tasks=TASKS, seed=None, **SMALL["d2nwg"])
    torch.manual_seed(5)
    b = d2nwg(_spec(), tasks=TASKS, seed=None, **SMALL["d2nwg"])
    _assert_same(a, b)
    with pytest.raises(ValueError, match="seed must be an int >= 0 or None, got -1"):
        d2nwg(_spec(), tasks=TASKS, seed=-1)


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_unknown_option_names_the_valid_ones(name):
    builder = PIPELINES[name]
    with pytest.raises(TypeError, match=rf"{builder.__name__}\(\) got an unknown option 'latent_chanels'; valid options: condition, tasks, seed, "):
        builder(_spec(), condition=None, latent_chanels=4)
    # The options stay visible to tools that read the signature (the command line's config check).
    params = inspect.signature(builder).parameters
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    assert {"condition", "tasks", "seed"} <= set(params)


def test_wiring_is_inferred_d2nwg():
    cond = IndexConditioner(["x", "y"], dim=5)
    gen = d2nwg([_state_dict(0), _state_dict(1)], condition=cond, latent_channels=3, **SMALL["d2nwg"])
    assert gen.conditioner is cond
    assert gen.tokenizer.config()["width"] == _spec().numel and gen.tokenizer.config()["rows"] == 1
    assert gen.prior.shape == gen.tokenizer.latent_shape == (3, 8)
    assert gen.prior.cond_dim == 5
    chunked = d2nwg(_spec(), condition=None, chunk_size=10, **SMALL["d2nwg"])
    assert chunked.tokenizer.config()["rows"] == 5 and chunked.tokenizer.config()["width"] == 10  # 48 weights in rows of 10
    assert chunked.prior.cond_dim == 0 and chunked.conditioner is None


def test_wiring_is_inferred_cond_pdiff():
    gen = cond_pdiff(_spec(), condition="task", tasks=TASKS, **SMALL["cond-pdiff"])
    assert isinstance(gen.vectorizer, LayerVectorizer)
    vec = gen.vectorizer
    assert (gen.tokenizer.config()["rows"], gen.tokenizer.config()["width"]) == (vec.rows, vec.width)
    assert gen.prior.shape == gen.tokenizer.latent_shape
    assert gen.prior.cond_dim == len(TASKS)  # one-hot over the tasks


def test_wiring_is_inferred_igpg_for_one_architecture_and_a_family():
    gen = igpg(_spec(), condition="task", tasks=TASKS, cond_dim=8, **SMALL["igpg"])
    assert isinstance(gen.tokenizer, GumbelVQTokenizer) and isinstance(gen.prior, GPTPrior)
    assert gen.prior.vocab_size == 16 and gen.prior.length == gen.tokenizer.tokens_shape[0] and gen.prior.cond_dim == 8
    small = ParamSpec.from_state_dict({"w": torch.zeros(3, 2)})
    fam = igpg({"big": _spec(), "small": small}, condition=None, **SMALL["igpg"])
    assert isinstance(fam.vectorizer, FamilyVectorizer)
    assert fam.prior.length == fam.tokenizer.tokens_shape[0] and fam.prior.cond_dim == 0


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_task_condition_without_task_names_is_refused(name):
    with pytest.raises(ValueError, match=r"condition='task'\) needs the task names: pass tasks=\[...\] or a paramgen.zoo.Zoo"):
        PIPELINES[name](_spec(), condition="task", **SMALL[name])


def test_bad_conditions_and_sources_are_refused():
    with pytest.raises(ValueError, match="condition must be 'task', 'dataset', None or a Conditioner, got 'tasks'"):
        d2nwg(_spec(), condition="tasks")
    with pytest.raises(ValueError, match="needs feature_dim"):
        d2nwg(_spec(), condition="dataset")
    with pytest.raises(TypeError, match="a Conditioner .* got 3"):
        d2nwg(_spec(), condition=3)
    with pytest.raises(ValueError, match="non-empty sequence of state dicts, got an empty one"):
        d2nwg([], condition=None)
    with pytest.raises(TypeError, match="expected a ParamSpec, a paramgen.zoo.Zoo or a sequence of state dicts, got str"):
        d2nwg("runs/zoo", condition=None)
    with pytest.raises(TypeError, match="sequence of state dicts .* got a sequence of Tensor"):
        d2nwg([torch.zeros(3)], condition=None)
    with pytest.raises(ValueError, match="tasks as a non-empty sequence of str"):
        d2nwg(_spec(), tasks="digits/0-1")
    with pytest.raises(ValueError, match="normalizer must be 'per-layer', 'per-task', 'global'"):
        d2nwg(_spec(), condition=None, normalizer="zscore")


def test_dataset_condition_builds_the_image_set_encoder():
    from paramgen.conditioners import ImageSetConditioner

    gen = d2nwg(_spec(), condition="dataset", feature_dim=12, cond_dim=24, **SMALL["d2nwg"])
    assert isinstance(gen.conditioner, ImageSetConditioner) and gen.conditioner.dim == 24 and gen.prior.cond_dim == 24


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_fit_config_carries_the_defaults_and_takes_overrides(name):
    fit_config = FIT_CONFIGS[name]
    cfg = fit_config()
    assert isinstance(cfg, FitConfig)
    module = inspect.getmodule(fit_config)
    for key, value in module.FIT_DEFAULTS.items():
        assert getattr(cfg, key) == value
    assert fit_config(prior_steps=7, progress=False).prior_steps == 7
    with pytest.raises(TypeError, match="fit_config\\(\\) got an unknown field 'prior_step'; valid fields: "):
        fit_config(prior_step=7)


def test_d2nwg_defaults_are_the_harness_values():
    gen = d2nwg(_spec(), condition=None)
    tok, prior = gen.tokenizer.config(), gen.prior.config()
    assert (tok["latent_channels"], tok["latent_length"], tok["hidden_channels"], tok["kl_weight"]) == (4, 32, 64, 1e-6)
    assert (tok["input_noise"], tok["latent_noise"]) == (1e-3, 1e-1)
    assert (prior["base_channels"], prior["channel_mults"], prior["ema_decay"], prior["timesteps"]) == (64, [1, 2], 0.995, 1000)
    cfg = FIT_CONFIGS["d2nwg"]()
    assert (cfg.tokenizer_steps, cfg.prior_steps, cfg.batch_size, cfg.prior_lr) == (4000, 8000, 64, 1e-3)


def test_fit_sample_save_load_from_a_list_of_state_dicts(tmp_path):
    zoo = [_state_dict(i) for i in range(6)]
    tasks = [TASKS[i % 3] for i in range(6)]
    gen = d2nwg(zoo, tasks=TASKS, seed=0, **SMALL["d2nwg"])
    flat, _ = _spec().flatten(zoo)
    paramgen.fit(gen, flat, tasks, tokenizer_steps=3, prior_steps=3, batch_size=3, generator=torch.Generator().manual_seed(0), progress=False)
    out = gen.sample(TASKS[:2], 2, generator=torch.Generator().manual_seed(1), sampler="ddim", steps=5)
    assert len(out) == 4 and out[0].keys() == zoo[0].keys()
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3, bias=False))
    net.load_state_dict(out[0])  # the sampled state dict fits the architecture
    again = Generator.from_pretrained(gen.save_pretrained(tmp_path / "gen"), spec=_spec())
    a = gen.sample_flat(TASKS[:1], 1, generator=torch.Generator().manual_seed(2), sampler="ddim", steps=5)
    b = again.sample_flat(TASKS[:1], 1, generator=torch.Generator().manual_seed(2), sampler="ddim", steps=5)
    assert torch.equal(a, b)


def test_igpg_fit_and_sample_with_gpt_options():
    zoo = [_state_dict(i) for i in range(4)]
    gen = igpg(zoo, tasks=TASKS[:2], condition="task", cond_dim=4, seed=0, **SMALL["igpg"])
    flat, _ = _spec().flatten(zoo)
    paramgen.fit(gen, flat, [TASKS[i % 2] for i in range(4)], tokenizer_steps=2, prior_steps=2, batch_size=2, generator=torch.Generator().manual_seed(0), progress=False)
    assert len(gen.sample(TASKS[:1], 2, generator=torch.Generator().manual_seed(0), temperature=0.5, top_k=3)) == 2
    with pytest.raises(TypeError, match=r"GPTPrior\.sample got sampler='ddim'; valid options: temperature, top_k"):
        gen.sample(TASKS[:1], 1, sampler="ddim")


def test_a_zoo_source_gives_its_spec_and_tasks(tmp_path):
    from paramgen.zoo import import_checkpoints

    zoo = import_checkpoints(tmp_path / "zoo", [_state_dict(i) for i in range(4)], tasks=[TASKS[0], TASKS[1], TASKS[0], TASKS[1]])
    gen = d2nwg(zoo, seed=0, **SMALL["d2nwg"])
    assert list(gen.conditioner.keys) == list(zoo.tasks)
    assert gen.tokenizer.config()["width"] == zoo.spec().numel


def test_igpg_normalizer_is_the_harness_fan_in_scale():
    from paramgen import GlobalScale

    small = ParamSpec.from_state_dict({"w": torch.zeros(3, 2)})
    for source in ({"big": _spec(), "small": small}, _spec()):
        norm = igpg(source, condition=None, **SMALL["igpg"]).normalizer
        assert isinstance(norm, GlobalScale) and norm.fan_in and list(norm.log) == ["*running_var"]  # the cross_arch harness's
    assert isinstance(igpg(_spec(), condition=None, normalizer="per-layer", **SMALL["igpg"]).normalizer, PerLayerZScore)


def test_cond_pdiff_reproduces_the_lora_harness_generator():
    """``benchmarks.lora``'s generator (``cond_pdiff(setup.spec(), seed=None, ...)``, formerly
    ``paramgen.lora.build_generator``) is its hand wiring under the same global seed."""
    from paramgen.conditioners import OneHotConditioner
    from paramgen.lora import LoRASetup
    from paramgen.normalize import PerTaskZScore

    setup, keys = LoRASetup(), ["negative-or-not", "positive-or-not"]
    spec = setup.spec()
    torch.manual_seed(0)
    vec = LayerVectorizer(spec, chunk_size=1536)
    tok = VAETokenizer(rows=vec.rows, width=vec.width, latent_channels=2, latent_length=16, hidden_channels=32, num_down=1, kl_weight=1e-6, input_noise=1e-3, latent_noise=1e-3)
    cond = OneHotConditioner(keys)
    prior = DiffusionPrior(shape=tok.latent_shape, cond_dim=cond.dim, timesteps=1000, base_channels=32, channel_mults=(1, 2), ema_decay=0.995)
    harness = Generator(vectorizer=vec, tokenizer=tok, prior=prior, conditioner=cond, normalizer=PerTaskZScore(unknown="global"))
    torch.manual_seed(0)
    built = cond_pdiff(spec, condition="task", tasks=keys, seed=None, prior_channels=32)
    _assert_same(harness, built)
    assert built.tokenizer.config() == harness.tokenizer.config() and built.prior.config() == harness.prior.config()
    assert type(built.normalizer) is type(harness.normalizer) and built.normalizer.unknown == harness.normalizer.unknown
    assert (built.vectorizer.rows, built.vectorizer.width) == (harness.vectorizer.rows, harness.vectorizer.width)


def test_lora_has_no_second_cond_pdiff_builder():
    import paramgen.lora

    assert not hasattr(paramgen.lora, "build_generator")


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_fit_defaults_restate_no_fitconfig_default(name):
    """A pipeline's ``FIT_DEFAULTS`` holds only what differs from `FitConfig`: a default lives once."""
    module = inspect.getmodule(FIT_CONFIGS[name])
    plain = FitConfig()
    restated = {k: v for k, v in module.FIT_DEFAULTS.items() if getattr(plain, k) == v}
    assert not restated, f"{name} restates FitConfig's defaults {restated}"


def test_fit_config_is_one_shared_function_per_pipeline():
    from paramgen.pipelines import _common

    for name, fit_config in FIT_CONFIGS.items():
        assert fit_config.__code__ is _common.fit_config_for({}, "x", "m").__code__, name
        assert inspect.getmodule(fit_config).fit_config is fit_config


def test_d2nwg_takes_a_family_like_igpg():
    family = {"big": _spec(), "small": ParamSpec.from_state_dict({"w": torch.zeros(3, 2)})}
    gen = d2nwg(family, condition=None, normalizer="global", **SMALL["d2nwg"])
    assert isinstance(gen.vectorizer, FamilyVectorizer) and gen.vectorizer.width == _spec().numel
    layer = d2nwg(family, condition=None, normalizer="global", chunk_size=4, layerwise=True, **SMALL["d2nwg"])
    assert isinstance(layer.vectorizer, FamilyVectorizer) and layer.vectorizer.width == 4
    with pytest.raises(ValueError, match="normalizer='per-layer' needs one architecture; use 'global' for a family"):
        d2nwg(family, condition=None, **SMALL["d2nwg"])


def test_d2nwg_reuses_a_fitted_tokenizer_and_checks_its_layout():
    first = d2nwg(_spec(), tasks=TASKS, seed=0, **SMALL["d2nwg"])
    torch.manual_seed(1)
    before = torch.get_rng_state()
    shared = d2nwg(_spec(), tasks=TASKS, seed=None, tokenizer=first.tokenizer, **SMALL["d2nwg"])
    assert shared.tokenizer is first.tokenizer
    torch.set_rng_state(before)  # nothing drawn for a VAE: the prior's weights are the first draw
    prior = DiffusionPrior(shape=first.tokenizer.latent_shape, cond_dim=64, timesteps=50, base_channels=16, channel_mults=(1, 2), ema_decay=0.995)
    assert all(torch.equal(a, b) for a, b in zip(prior.state_dict().values(), shared.prior.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match=r"d2nwg: tokenizer= expects rows x width 4 x 14 \(chunk_size=14\), got 1 x 48"):
        d2nwg(_spec(), tasks=TASKS, chunk_size=14, tokenizer=first.tokenizer, **SMALL["d2nwg"])
    with pytest.raises(TypeError, match="d2nwg: tokenizer= expects a tokenizer"):
        d2nwg(_spec(), tasks=TASKS, tokenizer=nn.Linear(2, 2), **SMALL["d2nwg"])


def test_d2nwg_builds_a_conditioner_from_a_callable_under_its_seed():
    import functools

    from paramgen.conditioners import ImageSetConditioner

    make = functools.partial(ImageSetConditioner, feature_dim=5, dim=7)
    a = d2nwg(_spec(), condition=make, seed=3, **SMALL["d2nwg"])
    b = d2nwg(_spec(), condition=make, seed=3, **SMALL["d2nwg"])
    assert isinstance(a.conditioner, ImageSetConditioner) and a.prior.cond_dim == 7
    _assert_same(a, b)
    dataset = d2nwg(_spec(), condition="dataset", feature_dim=5, cond_dim=7, seed=3, **SMALL["d2nwg"])
    _assert_same(a, dataset)  # "dataset" is that callable: same order, same draws

    class Ready:  # a ready conditioner that is no nn.Module: used as is, not called
        dim = 4

        def __call__(self, raw):
            return torch.zeros(len(raw), 4)

    ready = Ready()
    assert d2nwg(_spec(), condition=ready, **SMALL["d2nwg"]).conditioner is ready


def test_cond_pdiff_reuses_a_given_tokenizer_and_draws_nothing_for_it():
    """Condition ablations share one fitted VAE: ``tokenizer=`` is used as is, the prior is built
    on its latent shape, and nothing is drawn for a VAE (the prior's weights are the first draw)."""
    sd = {"lora_A": torch.randn(4, 32), "lora_B": torch.randn(32, 4)}
    opts = dict(condition="task", tasks=["pos", "neg"], **SMALL["cond-pdiff"])
    first = cond_pdiff([sd], seed=0, **opts)
    torch.manual_seed(1)
    shared = cond_pdiff([sd], seed=None, tokenizer=first.tokenizer, **opts)
    assert shared.tokenizer is first.tokenizer and shared.prior.shape == tuple(first.tokenizer.latent_shape)
    torch.manual_seed(1)
    alone = DiffusionPrior.from_config(shared.prior.config())
    for k, v in alone.state_dict().items():
        assert torch.equal(v, shared.prior.state_dict()[k]), k


def test_cond_pdiff_refuses_a_tokenizer_of_another_layout():
    sd = {"lora_A": torch.randn(4, 32), "lora_B": torch.randn(32, 4)}
    other = VAETokenizer(rows=3, width=16, latent_channels=2, latent_length=8, hidden_channels=8)
    with pytest.raises(ValueError, match=r"tokenizer= expects rows x width 16 x 16 \(chunk_size=16\), got 3 x 16"):
        cond_pdiff([sd], condition=None, tokenizer=other, **SMALL["cond-pdiff"])
    with pytest.raises(TypeError, match="tokenizer= expects a tokenizer .*got str"):
        cond_pdiff([sd], condition=None, tokenizer="vae", **SMALL["cond-pdiff"])
