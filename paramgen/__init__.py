"""paramgen: generate neural-network weights.

Vectorize model zoos exactly, fit generators (latent diffusion, VQ tokens + GPT) on them,
and sample weights conditioned on a dataset, a text, an architecture or a chunk index.

The public names below are imported on first use (PEP 562), so ``import paramgen`` and
the ``paramgen`` command line's ``--help`` load no torch.

Examples:
    >>> import torch, paramgen
    >>> spec = paramgen.ParamSpec.from_module(torch.nn.Linear(3, 2))
    >>> spec.numel
    8
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from paramgen.base import BaseMismatchError, PinnedBase
    from paramgen.fitting import fit
    from paramgen.generator import Generator
    from paramgen.interfaces import (
        Conditioner,
        DiscreteTokenizer,
        LatentStats,
        Prior,
        Selector,
        Tokenizer,
        TokenizerOutput,
        Vectorizer,
    )
    from paramgen.normalize import GlobalScale, Normalizer, PerLayerZScore, PerTaskZScore
    from paramgen.registry import register
    from paramgen.spec import NonFiniteWeightsError, ParamSpec, SpecMismatchError, TensorSpec
    from paramgen.training import FitConfig
    from paramgen.vectorize import ChunkVectorizer, FamilyVectorizer, LayerVectorizer, ModelVectorizer, VectorBatch

__all__ = [
    "Generator",
    "fit",
    "FitConfig",
    "LatentStats",
    "register",
    "Conditioner",
    "DiscreteTokenizer",
    "Prior",
    "Selector",
    "Tokenizer",
    "TokenizerOutput",
    "Vectorizer",
    "Normalizer",
    "GlobalScale",
    "PerLayerZScore",
    "PerTaskZScore",
    "ParamSpec",
    "TensorSpec",
    "SpecMismatchError",
    "NonFiniteWeightsError",
    "ModelVectorizer",
    "LayerVectorizer",
    "ChunkVectorizer",
    "FamilyVectorizer",
    "VectorBatch",
    "PinnedBase",
    "BaseMismatchError",
]

__version__ = "0.1.0"

# Public name -> the module that defines it.
_HOME = {
    "Generator": "paramgen.generator",
    "fit": "paramgen.fitting",
    "FitConfig": "paramgen.training",
    "register": "paramgen.registry",
    **dict.fromkeys(("Conditioner", "DiscreteTokenizer", "LatentStats", "Prior", "Selector", "Tokenizer", "TokenizerOutput", "Vectorizer"), "paramgen.interfaces"),
    **dict.fromkeys(("Normalizer", "GlobalScale", "PerLayerZScore", "PerTaskZScore"), "paramgen.normalize"),
    **dict.fromkeys(("ParamSpec", "TensorSpec", "SpecMismatchError", "NonFiniteWeightsError"), "paramgen.spec"),
    **dict.fromkeys(("PinnedBase", "BaseMismatchError"), "paramgen.base"),
    **dict.fromkeys(("ModelVectorizer", "LayerVectorizer", "ChunkVectorizer", "FamilyVectorizer", "VectorBatch"), "paramgen.vectorize"),
}


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access and cache the name here."""
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'paramgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


# A library never configures logging; this only silences "no handler" warnings.
logging.getLogger(__name__).addHandler(logging.NullHandler())
