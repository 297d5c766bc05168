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

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs
import torch
from torch import nn

from paramgen.spec import ParamSpec

__all__ = [
    "VectorBatch",
    "LatentStats",
    "TokenizerOutput",
    "Vectorizer",
    "Tokenizer",
    "DiscreteTokenizer",
    "Conditioner",
    "Prior",
    "Selector",
    "require",
]


@attrs.frozen(eq=False)
class VectorBatch:
    """Vectorized models.

    Attributes:
        values: ``(B, N, C)`` weights, zero where padded.
        mask: ``(B, N, C)`` bool, ``True`` on real entries (an expanded view: no copy).
        layer: ``(N,)`` layer index of each row (``-1`` for a whole-model row).
        chunk: ``(N,)`` chunk index of each row (within its layer for layer-wise).
        extras: Non-float tensors carried along, ``name -> (B, *shape)``.
    """

    values: torch.Tensor
    mask: torch.Tensor
    layer: torch.Tensor
    chunk: torch.Tensor
    extras: dict[str, torch.Tensor] = attrs.field(factory=dict)


@attrs.frozen(eq=False)
class TokenizerOutput:
    """What a tokenizer's ``encode`` / ``loss`` returns.

    Attributes:
        latents: ``(B, *latent_shape)`` continuous latents (for VQ: the quantized latents).
        indices: ``(B, N * l)`` codebook indices (``l`` tokens per row) for discrete
            tokenizers, else ``None``.
        loss: Scalar training loss (``None`` from ``encode``).
        metrics: Named scalars to log (reconstruction error, KL, codebook usage, ...):
            detached 0-dim tensors on the model's device, or Python floats. They are not
            read back every step (a device-to-host sync); call ``float(v)`` when logging.
    """

    latents: torch.Tensor
    indices: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor | float] = attrs.field(factory=dict)


@attrs.frozen
class LatentStats:
    """The standardization of latents before the prior: ``z = (latent - mean) / scale``.

    Fitted on the zoo's latents (diffusion on badly scaled latents collapses; see
    docs/latent-diffusion.md) and saved with the generator.

    Examples:
        >>> import torch
        >>> stats = LatentStats(mean=1.0, scale=2.0)
        >>> stats.standardize(torch.tensor([3.0])), stats.restore(torch.tensor([1.0]))
        (tensor([1.]), tensor([3.]))
        >>> LatentStats(mean=0.0, scale=0.0)
        Traceback (most recent call last):
        ...
        ValueError: LatentStats.scale must be a finite number > 0, got 0.0
    """

    mean: float = attrs.field(default=0.0, converter=float)
    scale: float = attrs.field(default=1.0, converter=float)

    def __attrs_post_init__(self) -> None:
        if not math.isfinite(self.mean):
            raise ValueError(f"LatentStats.mean must be finite, got {self.mean}")
        if not math.isfinite(self.scale) or self.scale <= 0:
            raise ValueError(f"LatentStats.scale must be a finite number > 0, got {self.scale}")

    def standardize(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents - self.mean) / self.scale

    def restore(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scale + self.mean


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

    def loss(self, x: torch.Tensor, *, mask: torch.Tensor | None = None, generator: torch.Generator | None = None) -> TokenizerOutput: ...


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
    ``fit(latents, cond)``, which the engine (`paramgen.training.fit`) calls instead.
    """

    def loss(self, latents: torch.Tensor, cond: torch.Tensor | None, *, generator: torch.Generator | None = None) -> torch.Tensor: ...

    def sample(self, n: int, cond: torch.Tensor | None, *, generator: torch.Generator | None = None) -> torch.Tensor: ...


def require(obj: Any, protocol: type, role: str) -> None:
    """Refuse ``obj`` as ``role`` unless it implements ``protocol`` (the error lists its verbs).

    Raises:
        TypeError: ``obj`` does not implement ``protocol``.

    Examples:
        >>> require(object(), Conditioner, "conditioner")
        Traceback (most recent call last):
        ...
        TypeError: conditioner must implement the Conditioner protocol (dim), got object
    """
    if not isinstance(obj, protocol):
        verbs = sorted(n for n in vars(protocol) if not n.startswith("_")) + sorted(getattr(protocol, "__annotations__", {}))
        raise TypeError(f"{role} must implement the {protocol.__name__} protocol ({', '.join(verbs)}), got {type(obj).__name__}")


@runtime_checkable
class Selector(Protocol):
    """Chooses which tensors of a model to generate; returns a narrower spec."""

    def select(self, model: nn.Module, spec: ParamSpec) -> ParamSpec: ...
