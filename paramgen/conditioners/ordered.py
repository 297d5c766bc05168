"""A support-set encoder that keeps the class order: for generating classifier heads.

`paramgen.conditioners.ImageSetConditioner` (D2NWG's ``T o T``) is invariant to the order
of the classes, which is right for a whole-dataset model whose label order is fixed by the
dataset, but a few-shot head generated from it cannot know which of its output rows
belongs to which support class: the same vector comes out for every ordering. This
encoder keeps the order: each class's images are encoded DeepSets-style (per-image MLP,
mean over the class's images), every class vector also sees the mean of all class vectors
(the episode context), and the per-class codes are concatenated in class order. Row ``c``
of a generated head can therefore depend on class ``c``'s images. It still uses no label
beyond the grouping, accepts any number of images per class, and is invariant to the
order of the images within a class. The number of classes is fixed (``num_classes``).

Examples:
    >>> import torch
    >>> cond = OrderedSetConditioner(feature_dim=6, num_classes=3, per_class=4).eval()
    >>> x = torch.randn(3, 5, 6)  # 3 classes in order, 5 images each
    >>> cond([x]).shape
    torch.Size([1, 12])
    >>> torch.allclose(cond([x]), cond([x[:, torch.randperm(5)]]), atol=1e-6)  # image order
    True
    >>> torch.allclose(cond([x]), cond([x[[1, 0, 2]]]), atol=1e-6)  # class order matters
    False
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from paramgen.registry import Configurable

__all__ = ["OrderedSetConditioner"]


class OrderedSetConditioner(nn.Module, Configurable):
    """Image features of ``K`` ordered classes ``(K, S, F)`` -> a vector ``(K * per_class,)``.

    Args:
        feature_dim: Width ``F`` of the image features.
        num_classes: ``K``, the number of classes of every condition.
        per_class: Width of each class's code; ``dim = num_classes * per_class``.
        hidden: Width of the image and class MLPs.
    """

    config_canonical = ("feature_dim", "num_classes", "per_class", "hidden")  # as ints

    def __init__(self, *, feature_dim: int, num_classes: int, per_class: int = 16, hidden: int = 128) -> None:
        super().__init__()
        for name, value in (("feature_dim", feature_dim), ("num_classes", num_classes), ("per_class", per_class), ("hidden", hidden)):
            if value < 1:
                raise ValueError(f"OrderedSetConditioner: expected {name} >= 1, got {value}")
        self.feature_dim, self.num_classes, self.per_class, self.hidden = int(feature_dim), int(num_classes), int(per_class), int(hidden)
        self.dim = self.num_classes * self.per_class
        self.image_mlp = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.class_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, per_class))

    def forward(self, raw: Sequence[torch.Tensor]) -> torch.Tensor:
        """Encode ``B`` support sets, each ``(K, S_b, F)`` (``S_b`` may differ), to ``(B, dim)``."""
        if isinstance(raw, torch.Tensor) or isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence) or len(raw) == 0:
            raise ValueError("OrderedSetConditioner: expected a non-empty sequence of (K, S, F) tensors; wrap a single set in a list")
        param = next(self.parameters())
        codes = []
        for i, item in enumerate(raw):
            if not isinstance(item, torch.Tensor) or item.dim() != 3 or item.shape[0] != self.num_classes or item.shape[2] != self.feature_dim or item.shape[1] < 1:
                got = tuple(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__
                raise ValueError(f"OrderedSetConditioner: expected set {i} of shape ({self.num_classes}, S >= 1, {self.feature_dim}), got {got}")
            codes.append(self.image_mlp(item.to(param)).mean(1))  # (K, hidden)
        # Sets with the same S could be stacked; the per-set loop above is cheap (small MLP).
        classes = torch.stack(codes)  # (B, K, hidden)
        context = classes.mean(1, keepdim=True).expand_as(classes)  # (B, K, hidden)
        out = self.class_mlp(torch.cat([classes, context], dim=-1))  # (B, K, per_class)
        return out.flatten(1)  # (B, K * per_class), classes in order

