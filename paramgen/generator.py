"""The `Generator`: a vectorizer, a tokenizer, a prior and a conditioner composed.

Sampling runs the pipeline backwards:

    raw condition --Conditioner--> (B, Dc) --Prior.sample--> latents --Tokenizer.decode-->
    rows (B, N, C) --Vectorizer.unpack--> flat (B, D) --Normalizer.inverse--> state dicts

Fitting (staged: tokenizer, condition alignment, prior) lands with the generators
themselves; the contract here is what every combination of components shares.

Examples:
    >>> import torch
    >>> from paramgen.spec import ParamSpec, SpecMismatchError
    >>> from paramgen.vectorize import ModelVectorizer
    >>> class Identity:  # a tokenizer that keeps rows as they are
    ...     def encode(self, x, *, mask=None): ...
    ...     def decode(self, latents): return latents
    ...     def loss(self, x, *, mask=None): ...
    >>> class Zeros:  # a prior that always says zero
    ...     def loss(self, latents, cond): ...
    ...     def sample(self, n, cond, *, generator=None): return torch.zeros(n, 1, 10)
    >>> net = torch.nn.Linear(4, 2)
    >>> gen = Generator(vectorizer=ModelVectorizer(ParamSpec.from_module(net)), tokenizer=Identity(), prior=Zeros())
    >>> net.load_state_dict(gen.sample(n=1)[0])
    <All keys matched successfully>
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from paramgen.interfaces import Conditioner, Prior, Tokenizer, Vectorizer
from paramgen.normalize import Normalizer
from paramgen.spec import ParamSpec, SpecMismatchError

__all__ = ["Generator"]

logger = logging.getLogger(__name__)


def _require(obj: Any, protocol: type, role: str) -> None:
    if not isinstance(obj, protocol):
        verbs = [name for name in protocol.__dict__.get("__annotations__", {})] + [
            name for name, v in vars(protocol).items() if callable(v) and not name.startswith("_")
        ]
        raise TypeError(f"{role} must implement the {protocol.__name__} protocol ({', '.join(sorted(set(verbs)))}), got {type(obj).__name__}")


class Generator:
    """Composes components into a weight generator.

    Args:
        vectorizer: How weights are laid out; fixes the architecture (``vectorizer.spec``).
        tokenizer: Rows to latents and back.
        prior: Generative model over latents.
        conditioner: Raw conditions to vectors; ``None`` for an unconditional generator.
        normalizer: Fitted normalizer whose ``inverse`` maps decoded vectors back to
            weight scale; ``None`` when weights are generated unnormalized.
    """

    def __init__(
        self,
        *,
        vectorizer: Vectorizer,
        tokenizer: Tokenizer,
        prior: Prior,
        conditioner: Conditioner | None = None,
        normalizer: Normalizer | None = None,
    ) -> None:
        _require(vectorizer, Vectorizer, "vectorizer")
        _require(tokenizer, Tokenizer, "tokenizer")
        _require(prior, Prior, "prior")
        if conditioner is not None:
            _require(conditioner, Conditioner, "conditioner")
        if normalizer is not None:
            _require(normalizer, Normalizer, "normalizer")
        self.vectorizer = vectorizer
        self.tokenizer = tokenizer
        self.prior = prior
        self.conditioner = conditioner
        self.normalizer = normalizer

    @property
    def spec(self) -> ParamSpec:
        """The architecture this generator produces."""
        return self.vectorizer.spec

    def condition(self, cond: Any) -> torch.Tensor | None:
        """Raw condition(s) to condition vectors ``(B, Dc)``; ``None`` if unconditional."""
        if self.conditioner is None:
            if cond is not None:
                raise ValueError("this generator is unconditional; pass cond=None")
            return None
        if cond is None:
            raise ValueError(f"this generator is conditioned by {type(self.conditioner).__name__}; pass cond")
        c = self.conditioner(cond)
        if c.ndim != 2 or c.shape[1] != self.conditioner.dim:
            raise ValueError(f"conditioner returned shape {tuple(c.shape)}, expected (B, {self.conditioner.dim})")
        return c

    @torch.no_grad()
    def sample_flat(
        self,
        cond: Any = None,
        n: int = 1,
        *,
        generator: torch.Generator | None = None,
        tasks: Sequence[str] | None = None,
        batch_size: int = 256,
    ) -> torch.Tensor:
        """Sample ``n`` weight vectors per condition: ``(B * n, D)`` in weight scale.

        ``tasks`` names the task of each condition for a per-task normalizer.
        """
        if n < 1:
            raise ValueError(f"n must be a positive integer, got {n}")
        c = self.condition(cond)
        b = 1 if c is None else c.shape[0]
        if c is not None:
            c = c.repeat_interleave(n, dim=0)  # (B*n, Dc)
        total = b * n
        out = []
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            latents = self.prior.sample(stop - start, None if c is None else c[start:stop], generator=generator)
            rows = self.tokenizer.decode(latents)  # (b, N, C)
            out.append(self.vectorizer.unpack(rows))
        flat = torch.cat(out)
        if self.normalizer is not None:
            row_tasks = None if tasks is None else [t for t in tasks for _ in range(n)]
            flat = self.normalizer.inverse(flat, tasks=row_tasks)
        return flat

    def sample(
        self,
        cond: Any = None,
        n: int = 1,
        *,
        generator: torch.Generator | None = None,
        tasks: Sequence[str] | None = None,
        base: Mapping[str, torch.Tensor] | None = None,
        batch_size: int = 256,
    ) -> list[dict[str, torch.Tensor]]:
        """Sample ``n`` state dicts per condition (see `sample_flat`).

        Args:
            base: State dict supplying tensors outside the generated selection.
        """
        flat = self.sample_flat(cond, n, generator=generator, tasks=tasks, batch_size=batch_size)
        return self.spec.unflatten(flat, base=base)

    def sample_into(self, model: nn.Module, cond: Any = None, *, generator: torch.Generator | None = None, **kwargs: Any) -> nn.Module:
        """Sample one set of weights and load it into ``model`` (which must match the spec)."""
        mine = {t.name: (t.shape, t.dtype) for t in self.spec.tensors}
        theirs = {t.name: (t.shape, t.dtype) for t in ParamSpec.from_module(model).tensors}
        if mine != theirs:
            diff = sorted(set(mine.items()) ^ set(theirs.items()))[:3]
            raise SpecMismatchError(f"model does not match the generator's architecture; differing tensors {diff}")
        sd = self.sample(cond, 1, generator=generator, base=model.state_dict(), **kwargs)[0]
        model.load_state_dict(sd, strict=True)
        return model
