"""D2NWG's dataset encoder: image sets grouped by class -> one vector per dataset.

A dataset is given as image features grouped by class, ``(K, S, F)``: ``K`` classes,
``S`` images per class, ``F`` features per image (D2NWG uses CLIP features of 5 images
per class). The set-transformer encoder (D2NWG sec. 3.3, Fig. 5) is ``T o T``: a first
Set Transformer (Lee et al. 2019) maps each class's ``S`` image features to one class
vector, a second maps the set of ``K`` class vectors to the dataset vector, then a linear
layer maps it to ``dim``. No label is used beyond the grouping, and the result is
invariant to the order of classes and of images within a class and defined for any
``K`` and ``S``. Datasets of different sizes share a batch through zero padding and
attention masks, so a batched vector equals the one computed alone (to float rounding).

The ``"mlp"`` variant stands for D2NWG's jointly trained two-layer MLP encoder (App.,
"Dataset Encoding Mechanisms"). The paper's version flattens the first ``c_max`` classes
and ``n_max`` images into a "dynamic linear layer", which depends on their order and
truncates larger datasets; here it is made DeepSets-style instead (per-image MLP, mean
over images, mean over classes, MLP to ``dim``) so that both variants have the same
invariances and accept any ``K`` and ``S``.

`paramgen.conditioners.align.align_to_latents` pre-trains the encoder with the CLIP-style
contrastive loss of eq. 2 (Alg. 2) against frozen weight latents, then freezes it.

Examples:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> cond = ImageSetConditioner(feature_dim=8, dim=16, hidden=32).eval()
    >>> datasets = [torch.randn(10, 5, 8, generator=g), torch.randn(3, 2, 8, generator=g)]
    >>> cond(datasets).shape  # two datasets: 10 classes x 5 images, 3 classes x 2 images
    torch.Size([2, 16])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from paramgen.conditioners.setfeatures import set_features
from paramgen.conditioners.settransformer import SetTransformer
from paramgen.registry import Configurable

__all__ = ["ImageSetConditioner"]


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over axis 1 of ``x (B, N, D)`` counting only ``mask (B, N)`` -> ``(B, D)``."""
    w = mask.to(x.dtype)[..., None]  # (B, N, 1)
    return (x * w).sum(1) / w.sum(1)


class ImageSetConditioner(nn.Module, Configurable):
    """D2NWG's dataset encoder: image features grouped by class -> a vector per dataset.

    Args:
        feature_dim: Width ``F`` of the image features.
        dim: Width of the output vectors.
        hidden: Width of the set transformers (or of the MLP).
        heads: Attention heads; ``hidden`` must be divisible by it.
        num_inducing: ISAB with that many inducing points instead of SAB in both set
            transformers (for many images or classes); ``None`` uses SAB.
        variant: ``"set_transformer"`` (``T o T``, D2NWG's main encoder) or ``"mlp"``
            (the DeepSets-style stand-in for its jointly trained MLP encoder).
        depth: SAB/ISAB blocks per set transformer (D2NWG: 2).
        feature_extractor: A frozen model ``(N, *image_shape) -> (N, feature_dim)``; with
            it ``forward`` takes images ``(K, S, *image_shape)`` instead of features. It
            is put in eval mode, frozen and kept out of this module's ``state_dict`` and
            `config` (pass it again to `from_config`); it stays on its own device.
            Precomputing features once with `set_features` is usually faster.

    Examples:
        >>> import torch
        >>> cond = ImageSetConditioner(feature_dim=6, dim=4, hidden=8, heads=2).eval()
        >>> x = torch.randn(3, 5, 6)  # 3 classes, 5 images each
        >>> shuffled = x[torch.randperm(3)][:, torch.randperm(5)]
        >>> torch.allclose(cond([x]), cond([shuffled]), atol=1e-5)
        True
        >>> rebuilt = ImageSetConditioner.from_config(cond.config())
        >>> _ = rebuilt.load_state_dict(cond.state_dict())
        >>> torch.equal(rebuilt.eval()([x]), cond([x]))
        True
    """

    feature_extractor: nn.Module | None  # a plain attribute, not a submodule
    config_ignore = ("feature_extractor",)  # an external model: given again to from_config
    config_canonical = ("feature_dim", "dim", "hidden", "heads", "depth")  # as ints

    def __init__(
        self,
        *,
        feature_dim: int,
        dim: int = 128,
        hidden: int = 128,
        heads: int = 4,
        num_inducing: int | None = None,
        variant: Literal["set_transformer", "mlp"] = "set_transformer",
        depth: int = 2,
        feature_extractor: nn.Module | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("feature_dim", feature_dim), ("dim", dim), ("hidden", hidden), ("heads", heads)):
            if value < 1:
                raise ValueError(f"ImageSetConditioner: expected {name} >= 1, got {value}")
        if variant not in ("set_transformer", "mlp"):
            raise ValueError(f"ImageSetConditioner: expected variant 'set_transformer' or 'mlp', got {variant!r}")
        if variant == "set_transformer" and hidden % heads != 0:
            raise ValueError(f"ImageSetConditioner: expected hidden divisible by heads, got hidden={hidden}, heads={heads}")
        self.feature_dim = int(feature_dim)
        self.dim = int(dim)
        self.hidden = int(hidden)
        self.heads = int(heads)
        self.num_inducing = num_inducing
        self.variant = variant
        self.depth = int(depth)
        if variant == "set_transformer":
            self.class_encoder = SetTransformer(feature_dim, hidden, heads=heads, depth=depth, num_inducing=num_inducing)
            self.dataset_encoder = SetTransformer(hidden, hidden, heads=heads, depth=depth, num_inducing=num_inducing)
            self.head: nn.Module = nn.Linear(hidden, dim)
        else:
            self.image_mlp = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
            self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        # A plain attribute, not a submodule: the extractor is external and frozen, so its
        # weights stay out of state_dict and config (like TextConditioner's MiniLM).
        object.__setattr__(self, "feature_extractor", None)
        if feature_extractor is not None:
            extractor_dim = getattr(feature_extractor, "feature_dim", feature_dim)
            if extractor_dim != feature_dim:
                raise ValueError(
                    f"ImageSetConditioner: expected a feature extractor with feature_dim={feature_dim}, "
                    f"got {extractor_dim}"
                )
            object.__setattr__(self, "feature_extractor", feature_extractor.eval().requires_grad_(False))

    def _features(self, raw: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Validate the items (and extract features) -> a list of ``(K_b, S_b, F)`` tensors."""
        if isinstance(raw, torch.Tensor) and raw.dim() == (3 if self.feature_extractor is None else 4):
            raise ValueError(
                f"ImageSetConditioner: expected a sequence of datasets, got one tensor {tuple(raw.shape)}; "
                "wrap a single dataset in a list"
            )
        if not isinstance(raw, (Sequence, torch.Tensor)) or isinstance(raw, (str, bytes)) or len(raw) == 0:
            raise ValueError(f"ImageSetConditioner: expected a non-empty sequence of datasets, got {type(raw).__name__}")
        expected = "(K, S, F) features" if self.feature_extractor is None else "(K, S, *image_shape) images"
        feats = []
        for i, item in enumerate(raw):
            ok = isinstance(item, torch.Tensor) and (item.dim() == 3 if self.feature_extractor is None else item.dim() >= 3)
            if not ok:
                got = tuple(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__
                raise ValueError(f"ImageSetConditioner: expected dataset {i} as {expected}, got {got}")
            if item.shape[0] == 0 or item.shape[1] == 0:
                raise ValueError(
                    f"ImageSetConditioner: expected dataset {i} to have K >= 1 classes and S >= 1 images, "
                    f"got K={item.shape[0]}, S={item.shape[1]}"
                )
            if self.feature_extractor is not None:
                item = set_features(self.feature_extractor, item)  # (K, S, F)
            if item.shape[-1] != self.feature_dim:
                raise ValueError(
                    f"ImageSetConditioner: expected dataset {i} with feature_dim={self.feature_dim}, got {item.shape[-1]}"
                )
            feats.append(item)
        return feats

    def forward(self, raw: Sequence[torch.Tensor]) -> torch.Tensor:
        """Encode ``B`` datasets.

        Args:
            raw: ``B`` tensors ``(K_b, S_b, F)`` of features (or ``(K_b, S_b, *image_shape)``
                images with a feature extractor); ``K_b`` and ``S_b`` may differ between items.

        Returns:
            ``(B, dim)`` dataset vectors.
        """
        feats = self._features(raw)
        param = next(self.parameters())
        device, dtype = param.device, param.dtype
        b = len(feats)
        k_max = max(f.shape[0] for f in feats)
        s_max = max(f.shape[1] for f in feats)
        n = sum(f.shape[0] for f in feats)
        # Every class of every dataset is one padded set of images.
        images = torch.zeros(n, s_max, self.feature_dim, device=device, dtype=dtype)  # (N, S_max, F)
        image_mask = torch.zeros(n, s_max, dtype=torch.bool, device=device)  # (N, S_max)
        class_mask = torch.zeros(b, k_max, dtype=torch.bool, device=device)  # (B, K_max)
        row = 0
        for i, f in enumerate(feats):
            k, s = f.shape[:2]
            images[row : row + k, :s] = f.to(device=device, dtype=dtype)
            image_mask[row : row + k, :s] = True
            class_mask[i, :k] = True
            row += k
        if self.variant == "set_transformer":
            class_vecs = self.class_encoder(images, mask=image_mask)  # (N, hidden)
        else:
            class_vecs = _masked_mean(self.image_mlp(images), image_mask)  # (N, hidden)
        # In the class vectors' dtype: under autocast they come out in bf16/fp16, not the input's.
        classes = class_vecs.new_zeros(b, k_max, self.hidden)  # (B, K_max, hidden)
        classes[class_mask] = class_vecs  # row-major order of the mask = dataset by dataset
        if self.variant == "set_transformer":
            pooled = self.dataset_encoder(classes, mask=class_mask)  # (B, hidden)
        else:
            pooled = _masked_mean(classes, class_mask)  # (B, hidden)
        return self.head(pooled)  # (B, dim)

    def extra_repr(self) -> str:
        extractor = type(self.feature_extractor).__name__ if self.feature_extractor is not None else None
        return f"variant={self.variant!r}, feature_dim={self.feature_dim}, dim={self.dim}, feature_extractor={extractor}"
