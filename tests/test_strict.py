"""Issue 13's bad inputs, one test each: a saved generator that is damaged or incomplete,
bad sampling and fitting arguments, a per-task normalizer without its tasks, sampled state
dicts that would drag the batch's storage along, a chunk-free layout too large to
allocate, and tied tensors selected by either name. Each must raise an error that names
what was expected (or, for the last ones, simply work)."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import paramgen
from paramgen import Generator, LayerVectorizer, ModelVectorizer, ParamSpec, PerTaskZScore
from paramgen.conditioners import IndexConditioner
from paramgen.generator import NotFittedError
from paramgen.priors import DiffusionPrior, KDEPrior
from paramgen.registry import BUILTINS
from paramgen.tokenizers import IdentityTokenizer

NET = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
SPEC = ParamSpec.from_module(NET)
TASKS = ["a"] * 4 + ["b"] * 4


def zoo() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.cat([torch.randn(4, SPEC.numel, generator=g) + 3, torch.randn(4, SPEC.numel, generator=g) - 3])


def kde(normalizer: Any = None) -> Generator:
    """A conditioned generator that fits in closed form: the tests stay fast."""
    return Generator(
        vectorizer=ModelVectorizer(SPEC), tokenizer=IdentityTokenizer(rows=1, width=SPEC.numel), prior=KDEPrior(),
        conditioner=IndexConditioner(["a", "b"], dim=4), normalizer=normalizer,
    )


@pytest.fixture(scope="module")
def fitted() -> Generator:
    return paramgen.fit(kde(PerTaskZScore()), zoo(), TASKS, tasks=TASKS, progress=False, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def saved(fitted: Generator, tmp_path: Path) -> Path:
    return fitted.save_pretrained(tmp_path / "gen")


def edit(path: Path, change: Any, *, digest: bool = True) -> None:
    """Change ``config.json``; ``digest=False`` also drops its ``config_sha256``, as in a
    folder saved before the digest (whose other checks must still hold on their own)."""
    config = json.loads((path / "config.json").read_text())
    change(config)
    if not digest:
        config.pop("config_sha256", None)
    (path / "config.json").write_text(json.dumps(config))


def samples(gen: Generator) -> torch.Tensor:
    return gen.sample_flat(["a", "b"], 2, tasks=["a", "b"], generator=torch.Generator().manual_seed(3))


# --------------------------------------------------------------------------- loading
def test_an_intact_folder_reloads_to_the_same_samples(fitted: Generator, saved: Path) -> None:
    assert "weights_sha256" in json.loads((saved / "config.json").read_text())
    assert torch.equal(samples(Generator.from_pretrained(saved)), samples(fitted))


def test_a_config_without_its_normalizer_entry_is_refused(saved: Path) -> None:
    edit(saved, lambda c: c["components"].pop("normalizer"))
    with pytest.raises(ValueError, match=r"holds normalizer tensors but .*config.json has no entry for it"):
        Generator.from_pretrained(saved)


def test_a_normalizer_entry_without_its_statistics_is_refused(saved: Path) -> None:
    # A generator saved without a normalizer, given a normalizer entry: nothing to load.
    gen = paramgen.fit(kde(), zoo(), TASKS, progress=False)
    path = gen.save_pretrained(saved.parent / "plain")
    edit(path, lambda c: c["components"].update(normalizer={"config": {"type": "per_task", "unknown": "error", "tasks": ["a"], "dim": 26}}), digest=False)
    with pytest.raises(ValueError, match="the normalizer cannot be rebuilt.*statistics are missing"):
        Generator.from_pretrained(path)


@pytest.mark.parametrize("version, shown", [(99, "99"), ("one", "'one'"), (None, "None"), (True, "True")])
def test_an_unknown_format_version_is_refused(saved: Path, version: Any, shown: str) -> None:
    edit(saved, lambda c: c.pop("version") if version is None else c.update(version=version))
    with pytest.raises(ValueError, match=f"format version {shown}; this paramgen reads versions"):
        Generator.from_pretrained(saved)


@pytest.mark.parametrize("scale", [0.0, -1.0, math.nan, math.inf, "one"])
def test_invalid_latent_scale_is_refused(saved: Path, scale: Any) -> None:
    edit(saved, lambda c: c["latent_stats"].update(scale=scale))
    with pytest.raises(ValueError, match="invalid latent statistics"):
        Generator.from_pretrained(saved)


def test_corrupted_weight_bytes_are_refused(saved: Path) -> None:
    weights = saved / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # one bit of one tensor value: safetensors itself would load it
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the SHA-256 digest"):
        Generator.from_pretrained(saved)


def test_a_folder_saved_before_the_digest_loads_with_a_warning(fitted: Generator, saved: Path, caplog: pytest.LogCaptureFixture) -> None:
    edit(saved, lambda c: c.pop("weights_sha256"))
    with caplog.at_level(logging.WARNING, logger="paramgen.pretrained"):
        again = Generator.from_pretrained(saved)
    assert "records no weights digest" in caplog.text
    assert torch.equal(samples(again), samples(fitted))


def to_version_1(config: dict) -> None:
    """Format 1 named classes by import path and kept the latent statistics apart."""
    config["version"] = 1
    for entry in config["components"].values():
        if "name" in entry:
            entry["class"] = BUILTINS[entry.pop("name")]
    stats = config.pop("latent_stats")
    config["latent_mean"], config["latent_scale"] = stats["mean"], stats["scale"]


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda c: c.pop("latent_stats"), "latent_stats"),
        (lambda c: c.pop("spec"), "spec"),
        (lambda c: c.pop("components"), "components"),
        (lambda c: c["components"].pop("prior"), "prior"),
        (lambda c: c["spec"].pop("layers"), "layers"),
        (lambda c: c["components"]["normalizer"]["config"].pop("tasks"), "tasks"),
        (lambda c: (to_version_1(c), c.pop("latent_scale")), "latent_scale"),
    ],
)
def test_a_missing_key_is_named_with_the_file(saved: Path, change: Any, key: str) -> None:
    edit(saved, change, digest=False)  # with the digest, the edit itself is refused (below)
    with pytest.raises(ValueError, match=rf"config.json.*{key}") as info:
        Generator.from_pretrained(saved)
    assert str(saved) in str(info.value)


# --------------------------------------------------------------------------- hand-edited configs
EDITED = "was edited after saving: its spec, vectorizer, components or latent statistics no longer match"


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c["components"]["prior"]["config"].update(bandwidth=0.5),
        lambda c: c["components"]["conditioner"]["config"].update(keys=["b", "a"]),  # same shapes, other meaning
        lambda c: c["components"]["normalizer"]["config"].update(unknown="global"),
        lambda c: c["latent_stats"].update(mean=0.5),
        lambda c: c.update(spec_id="0" * 16),
        lambda c: c["vectorizer"].update(length=c["vectorizer"]["length"] + 1),
    ],
    ids=["prior", "conditioner keys", "normalizer", "latent stats", "spec id", "vectorizer"],
)
def test_a_config_edited_after_saving_is_refused(saved: Path, change: Any) -> None:
    edit(saved, change)
    with pytest.raises(ValueError, match=EDITED) as info:
        Generator.from_pretrained(saved)
    assert str(saved / "config.json") in str(info.value) and len(str(info.value)) < 400


def _diffusion_folder(tmp_path: Path) -> Path:
    """A saved VAE-free diffusion generator (the issue's edits are the prior's)."""
    torch.manual_seed(0)
    prior = DiffusionPrior(shape=(1, SPEC.numel), timesteps=1000, base_channels=16, channel_mults=(1, 2), ema_decay=0.0)
    gen = Generator(vectorizer=ModelVectorizer(SPEC), tokenizer=IdentityTokenizer(rows=1, width=SPEC.numel), prior=prior)
    paramgen.fit(gen, zoo(), prior_steps=1, batch_size=4, progress=False, generator=torch.Generator().manual_seed(0))
    return gen.save_pretrained(tmp_path / "ddpm")


def test_the_prior_timesteps_edited_from_1000_to_50_are_refused(tmp_path: Path) -> None:
    """The issue's case: a shorter schedule fits the same weights and loaded silently."""
    path = _diffusion_folder(tmp_path)
    edit(path, lambda c: c["components"]["prior"]["config"].update(timesteps=50))
    with pytest.raises(ValueError, match=EDITED):
        Generator.from_pretrained(path)


def test_weights_that_do_not_fit_the_rebuilt_component_give_a_short_error(tmp_path: Path) -> None:
    """The issue's other case: base_channels edited (digest removed, as in an older folder)
    gave one line and ~270 lines of size-mismatch dump. Now: the first tensors and a count."""
    path = _diffusion_folder(tmp_path)
    edit(path, lambda c: c["components"]["prior"]["config"].update(base_channels=8), digest=False)
    with pytest.raises(ValueError) as info:
        Generator.from_pretrained(path)
    message = str(info.value)
    assert len(message) < 600 and "\n" not in message and "size mismatch" not in message
    assert re.search(r"the prior's saved weights do not fit the prior its entry in config\.json builds: (\d+) of (\d+) tensors differ", message)
    assert re.search(r"unet\.time_mlp\.0\.weight saved \(64, 16\) vs built \(32, 8\)", message)  # a tensor, both shapes
    assert re.search(r"and \d+ more\)", message)


def test_missing_or_extra_tensors_are_named_too(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tok = IdentityTokenizer(rows=1, width=SPEC.numel)
    gen = Generator(vectorizer=ModelVectorizer(SPEC), tokenizer=tok, prior=KDEPrior(), conditioner=IndexConditioner(["a", "b"], dim=4))
    path = paramgen.fit(gen, zoo(), TASKS, progress=False).save_pretrained(tmp_path / "g")
    weights = load_file(path / "weights.safetensors")
    weights["conditioner.extra"] = torch.zeros(2)
    save_file(weights, path / "weights.safetensors")
    edit(path, lambda c: c.pop("weights_sha256"))
    with pytest.raises(ValueError, match=r"1 of 2 tensors differ \(extra saved \(2,\) vs built absent\)") as info:
        Generator.from_pretrained(path)
    assert len(str(info.value)) < 400


def test_an_older_folder_without_the_config_digest_loads_with_a_warning(fitted: Generator, saved: Path, caplog: pytest.LogCaptureFixture) -> None:
    edit(saved, lambda c: None, digest=False)
    with caplog.at_level(logging.WARNING, logger="paramgen.pretrained"):
        again = Generator.from_pretrained(saved)
    assert "records no config digest" in caplog.text
    assert torch.equal(samples(again), samples(fitted))


def test_the_digest_follows_the_definition_not_the_file_layout(fitted: Generator, saved: Path) -> None:
    """A format-1 rewrite of the same generator, or another indentation, keeps its digest."""
    text = (saved / "config.json").read_text()
    (saved / "config.json").write_text(json.dumps(json.loads(text), indent=4, sort_keys=True))
    assert torch.equal(samples(Generator.from_pretrained(saved)), samples(fitted))
    edit(saved, to_version_1)
    assert torch.equal(samples(Generator.from_pretrained(saved)), samples(fitted))


def test_missing_weights_are_refused(saved: Path) -> None:
    (saved / "weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights.safetensors"):
        Generator.from_pretrained(saved)


# --------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("batch_size", [0, -2, 1.5])
def test_fit_refuses_a_batch_size_that_is_not_a_positive_integer(batch_size: Any) -> None:
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        paramgen.fit(kde(), zoo(), TASKS, batch_size=batch_size, progress=False)


@pytest.mark.parametrize("stage", ["tokenizer_steps", "align_steps", "prior_steps"])
def test_fit_refuses_negative_step_counts(stage: str) -> None:
    gen = kde()
    with pytest.raises(ValueError, match=f"{stage} must be an integer >= 0"):
        paramgen.fit(gen, zoo(), TASKS, progress=False, **{stage: -1})
    assert not gen.fitted


def test_a_prior_skipped_with_zero_steps_leaves_the_generator_unfitted() -> None:
    prior = DiffusionPrior(shape=(1, SPEC.numel), base_channels=8, channel_mults=(1,), timesteps=10)
    gen = Generator(vectorizer=ModelVectorizer(SPEC), tokenizer=IdentityTokenizer(rows=1, width=SPEC.numel), prior=prior)
    paramgen.fit(gen, zoo(), prior_steps=0, progress=False)
    assert not gen.fitted
    with pytest.raises(NotFittedError, match="prior_steps > 0"):
        gen.sample(n=1)
    # A closed-form prior needs no steps.
    assert paramgen.fit(kde(), zoo(), TASKS, prior_steps=0, progress=False).fitted


@pytest.mark.parametrize("empty", [torch.zeros(0, SPEC.numel), [], torch.zeros(0)])
def test_fit_refuses_an_empty_zoo(empty: Any) -> None:
    with pytest.raises(ValueError, match="at least one model; the zoo is empty"):
        paramgen.fit(kde(), empty, [], progress=False)


@pytest.mark.parametrize("kwargs, name", [({"n": 0}, "n"), ({"n": -3}, "n"), ({"n": 1.5}, "n"), ({"batch_size": 0}, "batch_size"), ({"batch_size": -1}, "batch_size")])
def test_sampling_refuses_counts_that_are_not_positive_integers(fitted: Generator, kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} must be a positive integer, got"):
        fitted.sample(["a"], tasks=["a"], **kwargs)
    with pytest.raises(ValueError, match=f"^{name} must be a positive integer"):
        fitted.sample_flat(["a"], tasks=["a"], **kwargs)
    if name == "batch_size":
        with pytest.raises(ValueError, match="^batch_size must be a positive integer"):
            fitted.reconstruct(zoo(), tasks=TASKS, batch_size=kwargs["batch_size"])


# --------------------------------------------------------------------------- per-task normalizer
def test_a_per_task_normalizer_names_the_missing_tasks_argument() -> None:
    gen = Generator(
        vectorizer=ModelVectorizer(SPEC), tokenizer=IdentityTokenizer(rows=1, width=SPEC.numel), prior=KDEPrior(),
        conditioner=IndexConditioner(["x", "y"], dim=4), normalizer=PerTaskZScore(),
    )
    conds = ["x"] * 4 + ["y"] * 4  # conditions that are not the task names
    paramgen.fit(gen, zoo(), conds, tasks=TASKS, progress=False)
    with pytest.raises(ValueError, match=r"PerTaskZScore normalizer needs the task of each condition: pass tasks= .*known tasks: \['a', 'b'\]"):
        gen.sample(["x"])
    with pytest.raises(ValueError, match=r"PerTaskZScore needs the task of each row: pass tasks="):
        gen.normalizer.inverse(zoo())  # type: ignore[union-attr]
    assert len(gen.sample(["x"], tasks=["b"])) == 1


def test_conditions_that_are_task_names_serve_as_the_tasks(fitted: Generator) -> None:
    implicit = fitted.sample_flat(["a", "b"], 3, generator=torch.Generator().manual_seed(5))
    explicit = fitted.sample_flat(["a", "b"], 3, generator=torch.Generator().manual_seed(5), tasks=["a", "b"])
    assert torch.equal(implicit, explicit)
    assert implicit[:3].mean() > 1 > -1 > implicit[3:].mean()  # each task's own scale (zoo means +3 and -3)


# --------------------------------------------------------------------------- memory
def test_sampled_state_dicts_own_compact_storage(fitted: Generator, tmp_path: Path) -> None:
    sds = fitted.sample(["a", "b"], 12, tasks=["a", "b"], generator=torch.Generator().manual_seed(0))
    for t in sds[5].values():
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
    save_file(sds[5], str(tmp_path / "one.safetensors"))
    payload = sum(t.numel() * t.element_size() for t in sds[5].values())
    assert (tmp_path / "one.safetensors").stat().st_size < payload + 1024  # its own size plus a small header
    unflat = SPEC.unflatten(torch.randn(24, SPEC.numel))
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for sd in unflat for t in sd.values())


def minilm_spec() -> ParamSpec:
    """all-MiniLM-L6-v2's 22.7M parameters as meta tensors: shapes only, nothing allocated."""
    h, f = 384, 1536
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (30522, h), "embeddings.position_embeddings.weight": (512, h),
        "embeddings.token_type_embeddings.weight": (2, h), "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,),
    }  # fmt: skip
    for i in range(6):
        p = f"encoder.layer.{i}."
        for n in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[p + n + ".weight"], shapes[p + n + ".bias"] = (h, h), (h,)
        shapes[p + "attention.output.LayerNorm.weight"] = shapes[p + "attention.output.LayerNorm.bias"] = (h,)
        shapes[p + "intermediate.dense.weight"], shapes[p + "intermediate.dense.bias"] = (f, h), (f,)
        shapes[p + "output.dense.weight"], shapes[p + "output.dense.bias"] = (h, f), (h,)
        shapes[p + "output.LayerNorm.weight"] = shapes[p + "output.LayerNorm.bias"] = (h,)
    shapes["pooler.dense.weight"], shapes["pooler.dense.bias"] = (h, h), (h,)
    return ParamSpec.from_state_dict({k: torch.empty(s, device="meta") for k, s in shapes.items()})


def test_a_chunk_free_layer_layout_of_minilm_is_refused_before_allocating() -> None:
    spec = minilm_spec()
    assert 22_500_000 < spec.numel < 22_800_000
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"pad 53 layers to the widest \('embeddings.word_embeddings', 11720448 weights\).*pass chunk_size="):
        LayerVectorizer(spec)
    assert time.perf_counter() - start < 0.5  # refused up front: no index map of 600M entries was built
    small = ParamSpec.from_module(nn.Sequential(nn.Linear(200, 3), nn.Linear(3, 2)))
    assert LayerVectorizer(small).width == 603  # small models still pad freely


# --------------------------------------------------------------------------- ties
@pytest.fixture(scope="module")
def gpt2() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=50, n_positions=16, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def vector_names(spec: ParamSpec) -> set[str]:
    return {t.name for t in spec.tensors if t.role == "vector"}


def test_a_tied_tensor_is_selected_by_either_name(gpt2: nn.Module) -> None:
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight
    for include in (["lm_head.*"], ["transformer.wte.*"]):
        spec = ParamSpec.from_module(gpt2, include=include)
        assert vector_names(spec) == {"transformer.wte.weight", "lm_head.weight"}
        assert spec.numel == 50 * 8  # stored once
        sd = spec.unflatten(torch.randn(1, spec.numel))[0]
        assert sd["lm_head.weight"] is sd["transformer.wte.weight"]
        narrowed = ParamSpec.from_module(gpt2).select(include=include)
        assert vector_names(narrowed) == {"transformer.wte.weight", "lm_head.weight"}


def test_a_tied_tensor_included_with_another_is_not_left_frozen(gpt2: nn.Module) -> None:
    spec = ParamSpec.from_module(gpt2, include=["lm_head.*", "transformer.h.0.ln_1.*"])
    assert vector_names(spec) == {"transformer.wte.weight", "lm_head.weight", "transformer.h.0.ln_1.weight", "transformer.h.0.ln_1.bias"}
    excluded = ParamSpec.from_module(gpt2, exclude=["lm_head.*"])  # excluded by either name: both frozen
    assert {"transformer.wte.weight", "lm_head.weight"}.isdisjoint(vector_names(excluded))
    sd = gpt2.state_dict()
    sampled = spec.unflatten(torch.randn(1, spec.numel), base=sd)[0]
    gpt2_copy = type(gpt2)(gpt2.config)
    gpt2_copy.load_state_dict(sampled, strict=True)
    assert torch.equal(gpt2_copy.lm_head.weight, sampled["transformer.wte.weight"])

