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
from typing import Any, Literal

import einops
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MAB",
    "SAB",
    "ISAB",
    "PMA",
    "SetTransformer",
    "ImageSetConditioner",
    "set_features",
]


def _check_mask(x: torch.Tensor, mask: torch.Tensor | None, owner: str) -> None:
    if x.dim() != 3:
        raise ValueError(f"{owner}: expected sets (B, N, D), got {tuple(x.shape)}")
    if mask is None:
        return
    if mask.shape != x.shape[:2] or mask.dtype != torch.bool:
        raise ValueError(f"{owner}: expected a bool mask of shape {tuple(x.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}")
    if not mask.any(dim=1).all():
        raise ValueError(f"{owner}: expected every set to have at least one element, got an empty set")


class MAB(nn.Module):
    """Multihead attention block: ``H = LN(X + Attn(X, Y)); out = LN(H + rFF(H))``.

    ``X`` is first projected to ``dim`` so the residual is defined when widths differ
    (as in Lee et al.'s reference code).

    Args:
        dim_q: Width of the queries ``X``.
        dim_kv: Width of the keys/values ``Y``.
        dim: Output width (and attention width); divisible by ``heads``.
        heads: Attention heads.
        layer_norm: Use the two layer norms (Lee et al. make them optional).

    Examples:
        >>> import torch
        >>> mab = MAB(4, 6, 8, heads=2)
        >>> mab(torch.zeros(2, 3, 4), torch.zeros(2, 5, 6)).shape
        torch.Size([2, 3, 8])
    """

    def __init__(self, dim_q: int, dim_kv: int, dim: int, *, heads: int = 4, layer_norm: bool = True) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"MAB: expected dim divisible by heads, got dim={dim}, heads={heads}")
        self.heads = heads
        self.to_q = nn.Linear(dim_q, dim)
        self.to_k = nn.Linear(dim_kv, dim)
        self.to_v = nn.Linear(dim_kv, dim)
        self.to_out = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.ln1 = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.ln2 = nn.LayerNorm(dim) if layer_norm else nn.Identity()

    def forward(self, x: torch.Tensor, y: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend from ``x (B, N, dim_q)`` to ``y (B, M, dim_kv)``; ``mask (B, M)`` is True on real keys."""
        q = self.to_q(x)  # (B, N, dim)
        k, v = self.to_k(y), self.to_v(y)  # (B, M, dim)
        q_h, k_h, v_h = (einops.rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, M), True = attend
        a = F.scaled_dot_product_attention(q_h, k_h, v_h, attn_mask=attn_mask)  # (B, h, N, d)
        a = einops.rearrange(a, "b h n d -> b n (h d)")  # (B, N, dim)
        h = self.ln1(q + self.to_out(a))
        return self.ln2(h + self.ff(h))  # (B, N, dim)


class SAB(nn.Module):
    """Set attention block ``MAB(X, X)``: permutation-equivariant, ``O(N^2)``.

    Examples:
        >>> import torch
        >>> SAB(4, 8, heads=2)(torch.zeros(2, 5, 4)).shape
        torch.Size([2, 5, 8])
    """

    def __init__(self, dim_in: int, dim: int, *, heads: int = 4) -> None:
        super().__init__()
        self.mab = MAB(dim_in, dim_in, dim, heads=heads)

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, N, dim_in)``, ``mask (B, N)`` -> ``(B, N, dim)``; padded rows are zero."""
        out = self.mab(x, x, mask=mask)
        return out if mask is None else out.masked_fill(~mask[..., None], 0.0)


class ISAB(nn.Module):
    """Induced set attention block: ``m`` inducing points make it ``O(N m)``, still equivariant.

    Examples:
        >>> import torch
        >>> ISAB(4, 8, heads=2, num_inducing=3)(torch.zeros(2, 5, 4)).shape
        torch.Size([2, 5, 8])
    """

    def __init__(self, dim_in: int, dim: int, *, heads: int = 4, num_inducing: int = 16) -> None:
        super().__init__()
        if num_inducing < 1:
            raise ValueError(f"ISAB: expected num_inducing >= 1, got {num_inducing}")
        self.inducing = nn.Parameter(torch.empty(1, num_inducing, dim))
        nn.init.xavier_uniform_(self.inducing)
        self.mab_in = MAB(dim, dim_in, dim, heads=heads)
        self.mab_out = MAB(dim_in, dim, dim, heads=heads)

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, N, dim_in)``, ``mask (B, N)`` -> ``(B, N, dim)``; padded rows are zero."""
        h = self.mab_in(self.inducing.expand(x.shape[0], -1, -1), x, mask=mask)  # (B, m, dim)
        out = self.mab_out(x, h)  # (B, N, dim)
        return out if mask is None else out.masked_fill(~mask[..., None], 0.0)


class PMA(nn.Module):
    """Pooling by multihead attention: learned seeds attend to the set; permutation-invariant.

    Examples:
        >>> import torch
        >>> PMA(8, heads=2)(torch.zeros(2, 5, 8)).shape
        torch.Size([2, 1, 8])
    """

    def __init__(self, dim: int, *, heads: int = 4, num_seeds: int = 1) -> None:
        super().__init__()
        if num_seeds < 1:
            raise ValueError(f"PMA: expected num_seeds >= 1, got {num_seeds}")
        self.seeds = nn.Parameter(torch.empty(1, num_seeds, dim))
        nn.init.xavier_uniform_(self.seeds)
        self.mab = MAB(dim, dim, dim, heads=heads)

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, N, dim)``, ``mask (B, N)`` -> ``(B, num_seeds, dim)``."""
        return self.mab(self.seeds.expand(x.shape[0], -1, -1), x, mask=mask)


class SetTransformer(nn.Module):
    """``depth`` SAB (or ISAB) blocks then a one-seed PMA: a set ``(B, N, dim_in)`` -> ``(B, dim)``.

    Args:
        dim_in: Width of the set elements.
        dim: Width of the hidden layers and of the output.
        heads: Attention heads; ``dim`` must be divisible by it.
        depth: Number of SAB/ISAB blocks before pooling (D2NWG uses 2).
        num_inducing: Use ISAB with that many inducing points (for large sets); ``None``
            uses SAB.

    Examples:
        >>> import torch
        >>> st = SetTransformer(4, 8, heads=2).eval()
        >>> x = torch.randn(1, 5, 4)
        >>> torch.allclose(st(x), st(x.flip(1)), atol=1e-6)
        True
    """

    def __init__(
        self, dim_in: int, dim: int, *, heads: int = 4, depth: int = 2, num_inducing: int | None = None
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"SetTransformer: expected depth >= 1, got {depth}")
        widths = [dim_in] + [dim] * depth
        self.blocks = nn.ModuleList(
            SAB(a, b, heads=heads) if num_inducing is None else ISAB(a, b, heads=heads, num_inducing=num_inducing)
            for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.pool = PMA(dim, heads=heads)

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, N, dim_in)`` with ``mask (B, N)`` (True on real elements) -> ``(B, dim)``."""
        _check_mask(x, mask, "SetTransformer")
        if mask is not None:
            x = x.masked_fill(~mask[..., None], 0.0)  # padding never carries NaN/Inf into a sum
        for block in self.blocks:
            x = block(x, mask=mask)  # (B, N, dim)
        return self.pool(x, mask=mask).squeeze(1)  # (B, dim)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over axis 1 of ``x (B, N, D)`` counting only ``mask (B, N)`` -> ``(B, D)``."""
    w = mask.to(x.dtype)[..., None]  # (B, N, 1)
    return (x * w).sum(1) / w.sum(1)


@torch.no_grad()
def set_features(
    extractor: nn.Module, images_by_class: torch.Tensor, *, batch_size: int = 256
) -> torch.Tensor:
    """Features of images grouped by class, computed once: ``(K, S, *image_shape) -> (K, S, F)``.

    The extractor runs in eval mode without gradients (its mode is restored afterwards),
    on the device of its parameters (the images are moved there); the features come
    back on the images' device.

    Args:
        extractor: Maps ``(N, *image_shape)`` to ``(N, F)`` (see `paramgen.conditioners.features`).
        images_by_class: ``K`` classes of ``S`` images each.
        batch_size: Images per extractor call.

    Returns:
        ``(K, S, F)`` features.

    Examples:
        >>> import torch
        >>> flat = torch.nn.Flatten()
        >>> set_features(flat, torch.zeros(3, 2, 1, 4, 4)).shape
        torch.Size([3, 2, 16])
    """
    if not isinstance(images_by_class, torch.Tensor) or images_by_class.dim() < 3:
        shape = tuple(images_by_class.shape) if isinstance(images_by_class, torch.Tensor) else type(images_by_class).__name__
        raise ValueError(f"set_features: expected images (K, S, *image_shape), got {shape}")
    if batch_size < 1:
        raise ValueError(f"set_features: expected batch_size >= 1, got {batch_size}")
    k, s = images_by_class.shape[:2]
    if k == 0 or s == 0:
        raise ValueError(f"set_features: expected at least one class and one image, got K={k}, S={s}")
    param = next(extractor.parameters(), None)
    device = images_by_class.device if param is None else param.device
    flat = images_by_class.reshape(k * s, *images_by_class.shape[2:])  # (K * S, *image_shape)
    was_training = extractor.training
    extractor.eval()
    try:
        feats = torch.cat([extractor(flat[i : i + batch_size].to(device)) for i in range(0, k * s, batch_size)])
    finally:
        extractor.train(was_training)
    if feats.dim() != 2 or feats.shape[0] != k * s:
        raise ValueError(f"set_features: expected the extractor to return ({k * s}, F), got {tuple(feats.shape)}")
    return feats.reshape(k, s, -1).to(images_by_class.device)  # (K, S, F)


class ImageSetConditioner(nn.Module):
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

    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments, JSON-serializable (the feature extractor is not included)."""
        return {
            "feature_dim": self.feature_dim,
            "dim": self.dim,
            "hidden": self.hidden,
            "heads": self.heads,
            "num_inducing": self.num_inducing,
            "variant": self.variant,
            "depth": self.depth,
        }

    @classmethod
    def from_config(
        cls, config: dict[str, Any], *, feature_extractor: nn.Module | None = None
    ) -> ImageSetConditioner:
        """Rebuild from `config`, with the feature extractor if ``forward`` should take images."""
        return cls(**config, feature_extractor=feature_extractor)

    def extra_repr(self) -> str:
        extractor = type(self.feature_extractor).__name__ if self.feature_extractor is not None else None
        return f"variant={self.variant!r}, feature_dim={self.feature_dim}, dim={self.dim}, feature_extractor={extractor}"
