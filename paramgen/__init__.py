"""paramgen: generate neural-network weights.

Vectorize model zoos exactly, fit generators (latent diffusion, VQ tokens + GPT) on them,
and sample weights conditioned on a dataset, a text, an architecture or a chunk index.

Examples:
    >>> import torch, paramgen
    >>> spec = paramgen.ParamSpec.from_module(torch.nn.Linear(3, 2))
    >>> spec.numel
    8
"""

import logging

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
]

__version__ = "0.1.0"

# A library never configures logging; this only silences "no handler" warnings.
logging.getLogger(__name__).addHandler(logging.NullHandler())
