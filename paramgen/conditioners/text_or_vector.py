"""`TextOrVectorConditioner`: a text condition, or a condition vector passed through.

Registered as ``"text-or-vector"`` (`paramgen.registry`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from paramgen._optional import require
from paramgen.conditioners.text import TextConditioner
from paramgen.registry import Configurable

__all__ = ["TextOrVectorConditioner"]


class TextOrVectorConditioner(nn.Module, Configurable):
    """A `paramgen.conditioners.TextConditioner` that also passes condition vectors through.

    A raw condition is a text (embedded by MiniLM) or a ``(dim,)`` tensor used as is, e.g.
    ``(1 - t) * c_a + t * c_b`` between two task conditions. No trainable weights.

    Args:
        **kwargs: Passed to ``TextConditioner`` (``dim`` must stay ``None``).

    Raises:
        ImportError: sentence-transformers is not installed (``pip install 'paramgen[text]'``).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        require("sentence_transformers", extra="text", feature="TextOrVectorConditioner")
        if kwargs.get("dim") is not None:
            raise ValueError("TextOrVectorConditioner passes vectors through; use dim=None")
        self.text = TextConditioner(**kwargs)
        self.dim = self.text.dim

    def forward(self, raw: Sequence[str | torch.Tensor]) -> torch.Tensor:
        """``(B, dim)`` vectors for ``B`` texts or vectors (mixed freely)."""
        if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence) or len(raw) == 0:
            raise ValueError("TextOrVectorConditioner: expected a non-empty sequence of texts or vectors")
        texts = [r for r in raw if not isinstance(r, torch.Tensor)]
        emb = iter(self.text(texts)) if texts else iter(())
        out = []
        for r in raw:
            if isinstance(r, torch.Tensor):
                if r.shape != (self.dim,):
                    raise ValueError(f"TextOrVectorConditioner: expected condition vectors of shape ({self.dim},), got {tuple(r.shape)}")
                out.append(r.to(self.text._anchor))
            else:
                out.append(next(emb))
        return torch.stack(out)
