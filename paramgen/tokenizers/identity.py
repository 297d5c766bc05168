"""The identity tokenizer: latents are the vectorized weights themselves.

Swapping it in for the VAE gives diffusion (or KDE) on raw weights, p-diff's ablation
"DDPM on raw weights" in the ``unconditional`` benchmark.

Examples:
    >>> import torch
    >>> tok = IdentityTokenizer(rows=3, width=5)
    >>> x = torch.randn(2, 3, 5)
    >>> torch.equal(tok.decode(tok.encode(x).latents), x), tok.latent_shape
    (True, (3, 5))
"""

from __future__ import annotations

import torch

from paramgen.interfaces import TokenizerOutput
from paramgen.registry import Configurable

__all__ = ["IdentityTokenizer"]


class IdentityTokenizer(Configurable):
    """Latents ``(B, N, C)`` equal the rows; nothing to train.

    Args:
        rows: Rows per model ``N``.
        width: Row width ``C``.
    """

    def __init__(self, *, rows: int, width: int) -> None:
        self.rows, self.width = rows, width

    @property
    def latent_shape(self) -> tuple[int, int]:
        return (self.rows, self.width)

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.rows, self.width):
            raise ValueError(f"expected tensors of shape (B, {self.rows}, {self.width}), got {tuple(x.shape)}")

    def encode(self, x: torch.Tensor, *, mask: torch.Tensor | None = None) -> TokenizerOutput:
        self._check(x)
        return TokenizerOutput(latents=x)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self._check(latents)
        return latents

    def loss(self, x: torch.Tensor, *, mask: torch.Tensor | None = None, generator: torch.Generator | None = None) -> TokenizerOutput:
        """No loss: nothing to train (``mask`` and ``generator`` are the protocol's; nothing is drawn)."""
        self._check(x)
        return TokenizerOutput(latents=x, loss=None)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"IdentityTokenizer has no weights, got {sorted(state)[:3]}")
