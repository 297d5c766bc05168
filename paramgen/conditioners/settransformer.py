"""Set Transformer blocks (Lee et al. 2019): MAB, SAB, ISAB, PMA and `SetTransformer`.

Sets are ``(B, N, D)`` with an optional bool mask ``(B, N)`` (True on real elements), so
sets of different sizes share a batch; a batched output equals the one computed alone (to
float rounding). `paramgen.conditioners.imageset.ImageSetConditioner` stacks two of
them (D2NWG's ``T o T`` dataset encoder).

Examples:
    >>> import torch
    >>> st = SetTransformer(4, 8, heads=2).eval()
    >>> st(torch.randn(2, 5, 4)).shape
    torch.Size([2, 8])
"""

from __future__ import annotations

import einops
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MAB", "SAB", "ISAB", "PMA", "SetTransformer"]


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
