"""Generator contract: every combination of components fits, samples reproducibly,
saves and reloads bit-identically, and rejects bad input clearly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import paramgen
from paramgen import ChunkVectorizer, FamilyVectorizer, Generator, GlobalScale, ModelVectorizer, ParamSpec, PerLayerZScore, PerTaskZScore
from paramgen.conditioners import ImageSetConditioner, IndexConditioner
from paramgen.generator import NotFittedError
from paramgen.priors import DiffusionPrior, KDEPrior
from paramgen.spec import SpecMismatchError
from paramgen.tokenizers import IdentityTokenizer, VAETokenizer

NET = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
SPEC = ParamSpec.from_module(NET)
TASKS = ["a", "b", "c"]


def zoo_vectors(per_task: int = 8) -> tuple[torch.Tensor, list[str]]:
    """Three well-separated clusters of weight vectors, one per task."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, SPEC.numel, generator=g) * 2
    flat = torch.cat([c + 0.05 * torch.randn(per_task, SPEC.numel, generator=g) for c in centers])
    var = SPEC["1.running_var"]
    flat[:, var.offset : var.offset + var.numel] = flat[:, var.offset : var.offset + var.numel].abs() + 0.1
    return flat, [t for t in TASKS for _ in range(per_task)]


def build(kind: str, vectorizer=None) -> Generator:
    vec = vectorizer or ModelVectorizer(SPEC)
    if kind == "vae+ddpm":
        tok = VAETokenizer(rows=vec.rows, width=vec.width, latent_channels=2, latent_length=8, hidden_channels=16, num_down=1)
        cond = IndexConditioner(TASKS, dim=8)
        prior = DiffusionPrior(shape=tok.latent_shape, cond_dim=8, timesteps=50, base_channels=16, channel_mults=(1, 2), ema_decay=0.9)
        return Generator(vectorizer=vec, tokenizer=tok, prior=prior, conditioner=cond, normalizer=PerLayerZScore(SPEC))
    if kind == "vae+kde":
        tok = VAETokenizer(rows=vec.rows, width=vec.width, latent_channels=2, latent_length=8, hidden_channels=16, num_down=1)
        return Generator(vectorizer=vec, tokenizer=tok, prior=KDEPrior(), conditioner=IndexConditioner(TASKS, dim=8), normalizer=PerTaskZScore())
    if kind == "raw ddpm":
        tok = IdentityTokenizer(rows=vec.rows, width=vec.width)
        prior = DiffusionPrior(shape=tok.latent_shape, timesteps=50, base_channels=16, channel_mults=(1,), ema_decay=0.0)
        # No log transform: a barely trained prior may ask exp() for huge values.
        return Generator(vectorizer=vec, tokenizer=tok, prior=prior, normalizer=PerLayerZScore(SPEC, log=()))
    raise ValueError(kind)


def fit(gen: Generator, steps: int = 30) -> Generator:
    flat, tasks = zoo_vectors()
    conds = tasks if gen.conditioner is not None else None
    return paramgen.fit(gen, flat, conds, tasks=tasks, tokenizer_steps=steps, prior_steps=steps, batch_size=16, prior_lr=1e-3, generator=torch.Generator().manual_seed(1), progress=False)


def cond_for(gen: Generator):
    return ["b", "c"] if gen.conditioner is not None else None


@pytest.fixture(scope="module", params=["vae+ddpm", "vae+kde", "raw ddpm"])
def fitted(request):
    return fit(build(request.param))


def test_sample_shapes_and_strict_loading(fitted):
    cond = cond_for(fitted)
    tasks = cond if isinstance(fitted.normalizer, PerTaskZScore) else None
    sds = fitted.sample(cond, 3, generator=torch.Generator().manual_seed(0), tasks=tasks)
    assert len(sds) == (6 if cond else 3)
    for sd in sds:
        NET.load_state_dict(sd, strict=True)
    flat = fitted.sample_flat(cond, 2, generator=torch.Generator().manual_seed(0), tasks=tasks)
    assert flat.shape == ((4 if cond else 2), SPEC.numel) and torch.isfinite(flat).all()


def test_seeded_sampling_is_reproducible(fitted):
    cond = cond_for(fitted)
    tasks = cond if isinstance(fitted.normalizer, PerTaskZScore) else None
    a = fitted.sample_flat(cond, 2, generator=torch.Generator().manual_seed(7), tasks=tasks)
    b = fitted.sample_flat(cond, 2, generator=torch.Generator().manual_seed(7), tasks=tasks)
    c = fitted.sample_flat(cond, 2, generator=torch.Generator().manual_seed(8), tasks=tasks)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_save_and_reload_sample_bit_identical_weights(fitted, tmp_path):
    fitted.save_pretrained(tmp_path / "gen")
    again = Generator.from_pretrained(tmp_path / "gen", spec=SPEC)
    cond = cond_for(fitted)
    tasks = cond if isinstance(fitted.normalizer, PerTaskZScore) else None
    a = fitted.sample_flat(cond, 2, generator=torch.Generator().manual_seed(3), tasks=tasks)
    b = again.sample_flat(cond, 2, generator=torch.Generator().manual_seed(3), tasks=tasks)
    assert torch.equal(a, b)
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == ["config.json", "weights.safetensors"]


def test_conditioning_selects_the_task():
    """A conditional generator puts samples near the cluster of the task asked for."""
    gen = fit(build("vae+ddpm"), steps=300)
    flat, tasks = zoo_vectors()
    centers = torch.stack([flat[[i for i, t in enumerate(tasks) if t == name]].mean(0) for name in TASKS])
    samples = gen.sample_flat(TASKS, 4, generator=torch.Generator().manual_seed(0))
    nearest = torch.cdist(samples, centers).argmin(1)
    assert nearest.tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_reconstruct_and_chunked_vectorizer():
    gen = fit(build("vae+ddpm", ChunkVectorizer(SPEC, chunk_size=16)), steps=20)
    flat, tasks = zoo_vectors()
    assert gen.reconstruct(flat).shape == flat.shape


# ----------------------------------------------------------------------------- errors
def test_sampling_before_fitting_is_refused(tmp_path):
    gen = build("vae+ddpm")
    with pytest.raises(NotFittedError, match="not fitted"):
        gen.sample(["a"])
    with pytest.raises(NotFittedError):
        gen.save_pretrained(tmp_path)


def test_wrong_condition_kind_or_size_is_refused(fitted):
    if fitted.conditioner is None:
        with pytest.raises(ValueError, match="unconditional"):
            fitted.sample(["a"])
        return
    with pytest.raises(KeyError, match="zzz"):
        fitted.sample(["zzz"])
    with pytest.raises(TypeError, match="sequence of raw conditions"):
        fitted.sample("a")  # a bare string, not a sequence of conditions
    with pytest.raises(ValueError, match="pass cond"):
        fitted.sample(None)


def test_every_argument_of_sample_acts_or_is_refused(fitted):
    """No keyword is taken and ignored: DDIM steps act without naming the sampler (DDIM is
    the default), and what a generator cannot use raises naming it."""
    cond = cond_for(fitted)
    tasks = cond if isinstance(fitted.normalizer, PerTaskZScore) else None
    draw = lambda **kw: fitted.sample_flat(cond, 2, generator=torch.Generator().manual_seed(0), tasks=tasks, **kw)  # noqa: E731
    if isinstance(fitted.prior, DiffusionPrior):
        assert torch.equal(draw(steps=5), draw(sampler="ddim", steps=5))
        assert not torch.equal(draw(steps=5), draw())
        assert not torch.equal(draw(), draw(sampler="ddpm"))
        with pytest.raises(ValueError, match=r"steps=5 acts with the DDIM sampler only.*sampler='ddpm'"):
            draw(sampler="ddpm", steps=5)
    else:
        with pytest.raises(TypeError, match=r"KDEPrior\.sample got steps=5; valid options: none"):
            draw(steps=5)
    if tasks is None:  # a normalizer without per-task statistics would ignore tasks=
        with pytest.raises(ValueError, match=rf"tasks= selects a per-task normalizer's statistics, but this generator has a {type(fitted.normalizer).__name__} normalizer"):
            fitted.sample_flat(cond, 1, tasks=["a"] * (len(cond) if cond else 1))
        with pytest.raises(ValueError, match="uses no tasks: drop tasks="):
            fitted.reconstruct(zoo_vectors()[0][:2], tasks=["a", "a"])
    with pytest.raises(ValueError, match=r"arch='mlp' picks a member of a family generator; this one has a single architecture"):
        fitted.sample_into(NET, cond[:1] if cond else None, arch="mlp")


def test_image_set_condition_of_wrong_feature_size_is_refused():
    vec = ModelVectorizer(SPEC)
    tok = IdentityTokenizer(rows=1, width=SPEC.numel)
    cond = ImageSetConditioner(feature_dim=12, dim=8)
    gen = Generator(vectorizer=vec, tokenizer=tok, prior=KDEPrior(), conditioner=cond)
    flat, tasks = zoo_vectors(4)
    sets = {t: torch.randn(3, 2, 12) for t in TASKS}
    paramgen.fit(gen, flat, [sets[t] for t in tasks], tokenizer_steps=0, progress=False)
    with pytest.raises(ValueError, match="12"):
        gen.sample([torch.randn(3, 2, 7)])


def test_components_that_do_not_fit_together_are_refused():
    vec = ModelVectorizer(SPEC)
    tok = VAETokenizer(rows=1, width=SPEC.numel, latent_channels=2, latent_length=8)
    with pytest.raises(ValueError, match="latent shape"):
        Generator(vectorizer=vec, tokenizer=tok, prior=DiffusionPrior(shape=(2, 9), timesteps=10))
    with pytest.raises(ValueError, match="conditioner"):
        Generator(vectorizer=vec, tokenizer=tok, prior=DiffusionPrior(shape=(2, 8), cond_dim=4, timesteps=10))
    with pytest.raises(ValueError, match="rows"):
        Generator(vectorizer=ChunkVectorizer(SPEC, chunk_size=8), tokenizer=tok, prior=DiffusionPrior(shape=(2, 8), timesteps=10))
    with pytest.raises(TypeError, match="Prior protocol"):
        Generator(vectorizer=vec, tokenizer=tok, prior=object())
    gen = build("raw ddpm")
    flat, _ = zoo_vectors()
    with pytest.raises(SpecMismatchError, match=rf"\(M, {SPEC.numel}\)"):
        paramgen.fit(gen, flat[:, :-1], progress=False)
    with pytest.raises(ValueError, match="unconditional"):
        paramgen.fit(gen, flat, ["a"] * len(flat), progress=False)


def test_generator_saved_for_another_architecture_is_refused(tmp_path):
    fit(build("raw ddpm"), steps=5).save_pretrained(tmp_path / "g")
    other = ParamSpec.from_module(nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 3)))
    with pytest.raises(SpecMismatchError, match="saved for another architecture"):
        Generator.from_pretrained(tmp_path / "g", spec=other)
    gen = Generator.from_pretrained(tmp_path / "g")
    with pytest.raises(SpecMismatchError, match="architecture"):
        gen.sample_into(nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 3)))
    model = gen.sample_into(NET, generator=torch.Generator().manual_seed(0))
    assert model is NET
    with pytest.raises(FileNotFoundError, match="no saved generator"):
        Generator.from_pretrained(tmp_path / "nothing")


def test_vq_gpt_generator_swaps_in_by_components_only(tmp_path):
    """The IGPG pipeline is the same Generator with other components: VQ tokens + GPT prior."""
    from paramgen.priors import GPTPrior
    from paramgen.tokenizers import GumbelVQTokenizer

    vec = ChunkVectorizer(SPEC, chunk_size=16)
    tok = GumbelVQTokenizer(rows=vec.rows, width=vec.width, codebook_size=32, tokens_per_chunk=2, code_dim=8, hidden=32, dead_code_threshold=1e-3)
    prior = GPTPrior(vocab_size=32, length=tok.tokens_shape[0], cond_dim=8, context=8, d_model=32, layers=1, heads=2)
    gen = Generator(vectorizer=vec, tokenizer=tok, prior=prior, conditioner=IndexConditioner(TASKS, dim=8), normalizer=PerLayerZScore(SPEC))
    fit(gen, steps=20)
    a = gen.sample_flat(["a", "c"], 2, generator=torch.Generator().manual_seed(0))
    assert a.shape == (4, SPEC.numel) and torch.isfinite(a).all()
    gen.save_pretrained(tmp_path / "igpg")
    b = Generator.from_pretrained(tmp_path / "igpg", spec=SPEC).sample_flat(["a", "c"], 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="vocabulary"):
        Generator(vectorizer=vec, tokenizer=tok, prior=GPTPrior(vocab_size=16, length=tok.tokens_shape[0]))
    with pytest.raises(TypeError, match="discrete tokenizer"):
        Generator(vectorizer=vec, tokenizer=IdentityTokenizer(rows=vec.rows, width=vec.width), prior=prior)


# ---------------------------------------------------------------------- families (IGPG)
SMALL = nn.Sequential(nn.Linear(6, 3))
BIG = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
UNSEEN = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def family_generator(kind: str):
    from paramgen import FamilyVectorizer
    from paramgen.normalize import GlobalScale
    from paramgen.priors import GPTPrior
    from paramgen.tokenizers import GumbelVQTokenizer

    specs = {k: ParamSpec.from_module(m) for k, m in (("small", SMALL), ("big", BIG), ("unseen", UNSEEN))}
    fam = FamilyVectorizer.chunked(specs, chunk_size=8)
    cond = IndexConditioner(["small", "big", "unseen"], dim=8)
    if kind == "vq+gpt":
        tok = GumbelVQTokenizer(rows=fam.rows, width=fam.width, codebook_size=32, tokens_per_chunk=2, code_dim=8, hidden=32)
        prior = GPTPrior(vocab_size=32, length=tok.tokens_shape[0], cond_dim=8, context=8, d_model=32, layers=1, heads=2)
    else:
        tok = VAETokenizer(rows=fam.rows, width=fam.width, latent_channels=1, latent_length=4, hidden_channels=8, num_down=1)
        prior = DiffusionPrior(shape=tok.latent_shape, cond_dim=8, timesteps=20, base_channels=8, channel_mults=(1,), ema_decay=0.0)
    return Generator(vectorizer=fam, tokenizer=tok, prior=prior, conditioner=cond, normalizer=GlobalScale(log=("*running_var",))), specs


def family_zoo(spec: ParamSpec, m: int, g: torch.Generator) -> list[torch.Tensor]:
    """Random vectors of one member; BatchNorm variances positive."""
    flat = torch.randn(m, spec.numel, generator=g)
    for t in spec.vector_tensors:
        if t.name.endswith("running_var"):
            flat[:, t.offset : t.offset + t.numel] = flat[:, t.offset : t.offset + t.numel].abs() + 0.1
    return list(flat)


@pytest.mark.parametrize("kind", ["vq+gpt", "vae+ddpm"])
def test_family_generator_serves_seen_and_unseen_architectures(kind, tmp_path):
    """One generator over a FamilyVectorizer writes weights for every member, seen in fit or not."""
    gen, specs = family_generator(kind)
    g = torch.Generator().manual_seed(0)
    flat = family_zoo(specs["small"], 6, g) + family_zoo(specs["big"], 6, g)
    archs = ["small"] * 6 + ["big"] * 6
    paramgen.fit(gen, flat, archs, archs=archs, tokenizer_steps=10, prior_steps=10, batch_size=8, generator=torch.Generator().manual_seed(1), progress=False)

    rec = gen.reconstruct(flat[:2] + flat[-1:], archs=["small", "small", "big"])
    assert [r.shape[0] for r in rec] == [specs["small"].numel] * 2 + [specs["big"].numel]
    out = gen.sample(["small", "unseen", "big"], 2, archs=["small", "unseen", "big"], generator=torch.Generator().manual_seed(0))
    assert len(out) == 6 and all((sd["1.running_var"] > 0).all() for sd in out[4:])  # variances generated in log space
    SMALL.load_state_dict(out[0])
    UNSEEN.load_state_dict(out[3])
    gen.sample_into(BIG, ["big"], arch="big", generator=torch.Generator().manual_seed(0))

    gen.save_pretrained(tmp_path / "fam")
    again = Generator.from_pretrained(tmp_path / "fam", spec=specs["unseen"])
    a = gen.sample_flat(["big"], 2, archs=["big"], generator=torch.Generator().manual_seed(3))
    b = again.sample_flat(["big"], 2, archs=["big"], generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    with pytest.raises(ValueError, match="one architecture key per model"):
        gen.sample_flat(["big"], 1)
    with pytest.raises(KeyError, match="unknown architecture 'huge'"):
        gen.sample_flat(["big"], 1, archs=["huge"])
    with pytest.raises(SpecMismatchError, match="labelled 'small'"):
        gen.reconstruct([flat[-1]], archs=["small"])
    with pytest.raises(SpecMismatchError, match="no member"):
        Generator.from_pretrained(tmp_path / "fam", spec=SPEC)
    with pytest.raises(AttributeError, match="specs"):
        _ = gen.spec


def test_family_rejects_architecture_specific_normalizer():
    from paramgen import FamilyVectorizer

    fam = FamilyVectorizer.chunked({"small": ParamSpec.from_module(SMALL)}, chunk_size=8)
    tok = IdentityTokenizer(rows=fam.rows, width=fam.width)
    with pytest.raises(TypeError, match="GlobalScale"):
        Generator(vectorizer=fam, tokenizer=tok, prior=KDEPrior(), normalizer=PerTaskZScore())
    with pytest.raises(ValueError, match="single architecture"):
        fit(build("vae+kde")).sample_flat(["a"], 1, archs=["a"])


def test_a_single_architecture_takes_global_scale_with_fan_in_and_log_like_a_family():
    # One code path normalizes a single architecture and a family's members: GlobalScale's
    # fan-in gains and log-variances need the spec in both.
    flat, _ = zoo_vectors(4)
    norm = GlobalScale(log=("*running_var",), fan_in=True)
    gen = Generator(vectorizer=ModelVectorizer(SPEC), tokenizer=IdentityTokenizer(rows=1, width=SPEC.numel), prior=KDEPrior(), normalizer=norm)
    paramgen.fit(gen, flat, progress=False)
    fam = Generator(
        vectorizer=FamilyVectorizer.modelwise({"net": SPEC}), tokenizer=IdentityTokenizer(rows=1, width=SPEC.numel), prior=KDEPrior(),
        normalizer=GlobalScale(log=("*running_var",), fan_in=True),
    )
    paramgen.fit(fam, list(flat), archs=["net"] * len(flat), progress=False)
    assert torch.equal(norm.state_dict()["scale"], fam.normalizer.state_dict()["scale"])
    assert torch.allclose(gen.reconstruct(flat), flat, atol=1e-5)
    a = gen.sample_flat(n=2, generator=torch.Generator().manual_seed(0))
    b = fam.sample_flat(n=2, archs=["net"], generator=torch.Generator().manual_seed(0))
    assert torch.allclose(a, torch.stack(b))


# ---------------------------------------------------------------- one way to fit (issue 19)
def _imports(path) -> set[str]:
    """Every module a file imports, at any depth (inside functions too)."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_the_generator_never_imports_the_engine():
    """Generator composes, samples and saves: not even a function of it imports paramgen.training."""
    import subprocess
    import sys
    from pathlib import Path

    import paramgen.generator

    engine = sorted(m for m in _imports(Path(paramgen.generator.__file__)) if m == "paramgen.training" or m.startswith("paramgen.training."))
    assert engine == []
    assert not hasattr(Generator, "fit"), "Generator.fit imports the engine: the one way to fit is paramgen.training.fit (or paramgen.fit)"
    code = "import sys, paramgen.generator, paramgen.layout, paramgen.pretrained; print('paramgen.training' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _fitted_pair(make_vectorizer):
    """The same generator over ``vec`` and over a FamilyVectorizer of one member ``"model"``."""
    out = []
    for family in (False, True):
        vec = make_vectorizer()
        torch.manual_seed(0)
        tok = VAETokenizer(rows=vec.rows, width=vec.width, latent_channels=2, latent_length=8, hidden_channels=16, num_down=1)
        prior = DiffusionPrior(shape=tok.latent_shape, cond_dim=8, timesteps=50, base_channels=16, channel_mults=(1,))
        gen = Generator(
            vectorizer=FamilyVectorizer({"model": vec}) if family else vec, tokenizer=tok, prior=prior,
            conditioner=IndexConditioner(TASKS, dim=8), normalizer=GlobalScale(),
        )  # fmt: skip
        flat, tasks = zoo_vectors(4)
        archs = ["model"] * len(flat) if family else None
        paramgen.fit(gen, flat, tasks, archs=archs, tokenizer_steps=4, prior_steps=4, batch_size=6, generator=torch.Generator().manual_seed(3), progress=False)
        out.append((gen, flat, archs))
    return out


def test_a_single_architecture_is_a_family_of_one():
    """One code path: a generator over one vectorizer and one over a FamilyVectorizer of that
    single member fit, reconstruct and sample the same weights, bit for bit."""
    (single, flat, _), (family, _, archs) = _fitted_pair(lambda: ChunkVectorizer(SPEC, chunk_size=16))
    assert single.specs == family.specs == {"model": SPEC}
    for (k, a), b in zip(single.tokenizer.state_dict().items(), family.tokenizer.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert single.latent_stats == family.latent_stats
    assert torch.equal(single.reconstruct(flat[:5]), torch.stack(family.reconstruct(list(flat[:5]), archs=archs[:5])))
    a = single.sample(["a", "c"], 2, generator=torch.Generator().manual_seed(1), steps=5)
    b = family.sample(["a", "c"], 2, archs=["model", "model"], generator=torch.Generator().manual_seed(1), steps=5)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    # Public behaviour of each kind stays: archs= is refused by a single architecture, needed by a family.
    with pytest.raises(ValueError, match="archs= is for a generator over a FamilyVectorizer"):
        single.sample(["a"], archs=["model"])
    with pytest.raises(ValueError, match="needs one architecture key per model"):
        family.sample(["a"])


def test_encode_zoo_is_the_encoder_the_engine_standardized():
    """One function encodes a zoo: the latent statistics fit records are those of encode_zoo's latents."""
    from paramgen.interfaces import LatentStats
    from paramgen.layout import ZooRows

    gen = fit(build("vae+ddpm"), steps=3)
    flat, tasks = zoo_vectors()
    archs = gen.layout.check_archs(None, len(flat))
    enc = gen.encode_zoo(ZooRows(*gen.layout.to_rows(flat, tasks, archs), conds=tasks, tasks=tasks), batch_size=5)
    assert enc.conds == tasks and enc.tasks == tasks and enc.latents is None
    assert gen.latent_stats == LatentStats(mean=float(enc.codes.mean()), scale=float(enc.codes.std()))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        gen.encode_zoo(ZooRows(*gen.layout.to_rows(flat, tasks, archs)), batch_size=0)


def test_paramgen_fit_is_the_engine_with_a_seed_drawn_from_generator():
    """The shortcut restates no default: its keywords go to FitConfig as they are, and the seed
    is drawn from ``generator`` exactly as Generator.fit drew it, so results stay bit-identical."""
    import inspect

    import attrs

    from paramgen.training import FitConfig
    from paramgen.training import fit as engine_fit

    fields = {f.name for f in attrs.fields(FitConfig)}
    params = inspect.signature(paramgen.fit).parameters
    assert not fields & set(params), "paramgen.fit restates FitConfig fields (and so their defaults)"
    flat, tasks = zoo_vectors(4)
    a, b = build("vae+kde"), build("vae+kde")
    for gen in (a, b):
        torch.manual_seed(0)
        for part in (gen.tokenizer, gen.conditioner):
            for p in part.parameters():
                torch.nn.init.normal_(p)
    paramgen.fit(a, flat, tasks, tasks=tasks, tokenizer_steps=3, batch_size=4, progress=False, generator=torch.Generator().manual_seed(9))
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(9)))
    engine_fit(b, flat, tasks, tasks=tasks, config=FitConfig(tokenizer_steps=3, batch_size=4, progress=False, seed=seed))
    for k, v in a.tokenizer.state_dict().items():
        assert torch.equal(v, b.tokenizer.state_dict()[k]), k
    assert a.latent_stats == b.latent_stats
    with pytest.raises(TypeError, match=r"'seed'.*drawn from generator="):
        paramgen.fit(build("vae+kde"), flat, tasks, seed=1)
    with pytest.raises(TypeError, match="'tokenizer_step'.*not a FitConfig field"):
        paramgen.fit(build("vae+kde"), flat, tasks, tokenizer_step=1)


def test_family_folders_of_format_1_and_2_still_load(tmp_path):
    """A family generator saved now (format 2) and the same folder as format 1 wrote it
    (class paths, latent mean and scale apart, no digests) load and sample the same weights."""
    import json

    from paramgen.registry import BUILTINS

    gen, specs = family_generator("vae+ddpm")
    g = torch.Generator().manual_seed(0)
    flat = family_zoo(specs["small"], 4, g) + family_zoo(specs["big"], 4, g)
    archs = ["small"] * 4 + ["big"] * 4
    paramgen.fit(gen, flat, archs, archs=archs, tokenizer_steps=2, prior_steps=2, batch_size=4, generator=torch.Generator().manual_seed(1), progress=False)
    path = gen.save_pretrained(tmp_path / "fam")
    reference = gen.sample_flat(["unseen", "big"], 2, archs=["unseen", "big"], generator=torch.Generator().manual_seed(3))
    config = json.loads((path / "config.json").read_text())
    assert config["version"] == 2 and config["spec"] is None and config["vectorizer"]["type"] == "family"
    v2 = Generator.from_pretrained(path).sample_flat(["unseen", "big"], 2, archs=["unseen", "big"], generator=torch.Generator().manual_seed(3))
    config["version"] = 1
    for entry in config["components"].values():
        if "name" in entry:
            entry["class"] = BUILTINS[entry.pop("name")]
    stats = config.pop("latent_stats")
    config["latent_mean"], config["latent_scale"] = stats["mean"], stats["scale"]
    del config["config_sha256"], config["weights_sha256"]
    (path / "config.json").write_text(json.dumps(config))
    v1 = Generator.from_pretrained(path).sample_flat(["unseen", "big"], 2, archs=["unseen", "big"], generator=torch.Generator().manual_seed(3))
    for ref, a, b in zip(reference, v2, v1, strict=True):
        assert torch.equal(ref, a) and torch.equal(ref, b)
