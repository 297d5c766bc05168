"""The small interfaces every paramgen component implements.

A generator of weights is a pipeline of swappable parts (see `paramgen.Generator`):

``state dicts --Vectorizer--> rows (B, N, C) --Tokenizer--> latents/tokens --Prior(cond)``

with a `Conditioner` turning raw conditions (image sets, texts, architectures,
indices) into vectors, and a `Selector` choosing which tensors of a large model to
generate. Swapping one component is how ablations are done, so each protocol has only a
few verbs. All stochastic verbs take a ``torch.Generator``: the caller owns randomness.

Examples:
    >>> import torch
    >>> from paramgen.spec import ParamSpec
    >>> from paramgen.vectorize import ChunkVectorizer
    >>> vec = ChunkVectorizer(ParamSpec.from_module(torch.nn.Linear(4, 2)), chunk_size=5)
    >>> isinstance(vec, Vectorizer)
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs
import torch
from torch import nn

from paramgen.spec import ParamSpec
from paramgen.vectorize import VectorBatch

__all__ = [
    "TokenizerOutput",
    "Vectorizer",
    "Tokenizer",
    "DiscreteTokenizer",
    "Conditioner",
    "Prior",
    "Selector",
]


@attrs.frozen(eq=False)
class TokenizerOutput:
    """What a tokenizer's ``encode`` / ``loss`` returns.

    Attributes:
        latents: ``(B, *latent_shape)`` continuous latents (for VQ: the quantized latents).
        indices: ``(B, N * l)`` codebook indices (``l`` tokens per row) for discrete
            tokenizers, else ``None``.
        loss: Scalar training loss (``None`` from ``encode``).
        metrics: Named scalars to log (reconstruction error, KL, codebook usage, ...).
    """

    latents: torch.Tensor
    indices: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    metrics: dict[str, float] = attrs.field(factory=dict)


@runtime_checkable
class Vectorizer(Protocol):
    """Lays a model's weights out as rows ``(B, N, C)`` and back, exactly."""

    spec: ParamSpec
    rows: int
    width: int

    def flatten(self, state_dicts: Sequence[Mapping[str, torch.Tensor]], *, check_finite: bool = True) -> VectorBatch: ...

    def unflatten(
        self,
        values: torch.Tensor,
        *,
        extras: Mapping[str, torch.Tensor] | None = None,
        base: Mapping[str, torch.Tensor] | None = None,
        check_finite: bool = True,
    ) -> list[dict[str, torch.Tensor]]: ...

    def pack(self, flat: torch.Tensor) -> torch.Tensor: ...

    def unpack(self, values: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Tokenizer(Protocol):
    """Maps vectorized weights ``(B, N, C)`` to latents and back (VAE, VQ-VAE, identity)."""

    def encode(self, x: torch.Tensor, *, mask: torch.Tensor | None = None) -> TokenizerOutput: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def loss(self, x: torch.Tensor, *, mask: torch.Tensor | None = None) -> TokenizerOutput: ...


@runtime_checkable
class DiscreteTokenizer(Tokenizer, Protocol):
    """A tokenizer whose latents are codebook entries."""

    codebook_size: int

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Conditioner(Protocol):
    """Turns a batch of raw conditions into vectors ``(B, dim)``."""

    dim: int

    def __call__(self, raw: Any) -> torch.Tensor: ...


@runtime_checkable
class Prior(Protocol):
    """A generative model over latents (or tokens), given condition vectors.

    A prior without gradient training (e.g. the KDE baseline) also has
    ``fit(latents, cond)``, which `paramgen.Generator.fit` calls instead.
    """

    def loss(self, latents: torch.Tensor, cond: torch.Tensor | None, *, generator: torch.Generator | None = None) -> torch.Tensor: ...

    def sample(self, n: int, cond: torch.Tensor | None, *, generator: torch.Generator | None = None) -> torch.Tensor: ...


@runtime_checkable
class Selector(Protocol):
    """Chooses which tensors of a model to generate; returns a narrower spec."""

    def select(self, model: nn.Module, spec: ParamSpec) -> ParamSpec: ...
