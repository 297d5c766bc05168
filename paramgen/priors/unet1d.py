"""An epsilon-predicting UNet of 1D convolutions over latents ``(B, C, T)``.

Weights have no 2D neighbourhood, so the denoiser convolves along one axis only
(Cond P-Diff's 1D UNet; D2NWG's latent UNet with the condition concatenated). The layout
follows lucidrains' ``Unet1D`` without attention: two residual blocks per level, a strided
convolution down, nearest-neighbour upsampling plus a convolution up, skip connections
between mirrored blocks. Lengths need not be powers of two: the input is zero-padded on
the right to a multiple of ``2 ** (levels - 1)`` and the output cropped back.

Examples:
    >>> import torch
    >>> net = UNet1D(in_channels=2, base_channels=8, channel_mults=(1, 2))
    >>> net(torch.randn(3, 2, 37), torch.tensor([0, 5, 9])).shape
    torch.Size([3, 2, 37])
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from paramgen._random import rand

__all__ = ["UNet1D"]


def _group_count(channels: int, groups: int) -> int:
    """The largest group count ``<= groups`` that divides ``channels`` (GroupNorm needs it)."""
    for g in range(min(groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def _dropout(h: torch.Tensor, p: float, training: bool, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout whose mask comes from ``generator`` (``nn.Dropout`` reads the global RNG)."""
    if not training or p == 0.0:
        return h
    keep = rand(h.shape, generator=generator, device=h.device) >= p
    return h * keep.to(h.dtype) / (1.0 - p)


def _sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style sinusoidal embedding of integer steps: ``(B,) -> (B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half, 1))
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([args.sin(), args.cos()], dim=-1)  # (B, 2 * half)
    return F.pad(emb, (0, dim - 2 * half))  # odd dim: one zero column


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv1d twice, with the (time + condition) embedding added in between."""

    def __init__(self, in_ch: int, out_ch: int, *, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_group_count(in_ch, groups), in_ch)
        self.conv1 = nn.Conv1d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(_group_count(out_ch, groups), out_ch)
        self.conv2 = nn.Conv1d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (guided-diffusion)
        assert self.conv2.bias is not None
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.dropout = dropout

    def forward(self, x: torch.Tensor, emb: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, L)
        h = h + self.emb(F.silu(emb))[:, :, None]
        h = _dropout(F.silu(self.norm2(h)), self.dropout, self.training, generator)
        return self.conv2(h) + self.skip(x)


class UNet1D(nn.Module):
    """Epsilon-predicting 1D-convolutional UNet: ``(x (B, C, T), t (B,), cond (B, Dc)) -> (B, C, T)``.

    Conditioning is concatenated as in D2NWG: a linear map sends ``cond`` to
    ``cond_channels x length`` extra input channels. A second linear projection of ``cond``
    is added to the time embedding, so every residual block sees the condition too (the
    concatenated channels alone reach deep layers only through the convolutions). With
    ``cond_dim = 0`` the network is unconditional.

    GroupNorm uses the largest group count ``<= groups`` that divides each layer's width.

    Args:
        in_channels: Latent channels ``C``.
        cond_dim: Size ``Dc`` of condition vectors; 0 for unconditional.
        base_channels: Width of the first level.
        channel_mults: Width multipliers per level; ``len(channel_mults) - 1`` halvings.
        cond_channels: Channels of the concatenated condition map (0: only the embedding).
        length: Latent length ``T``; required when ``cond_dim > 0`` and
            ``cond_channels > 0`` (the condition map has one value per position).
        time_dim: Width of the time embedding (``None``: ``4 * base_channels``).
        groups: Maximum GroupNorm groups.
        dropout: Dropout inside residual blocks while training (masks drawn from the
            ``generator`` passed to ``forward``).

    Examples:
        >>> import torch
        >>> net = UNet1D(in_channels=4, cond_dim=3, length=10, base_channels=8, channel_mults=(1, 2))
        >>> net(torch.randn(2, 4, 10), torch.tensor([1, 7]), torch.randn(2, 3)).shape
        torch.Size([2, 4, 10])
    """

    def __init__(
        self,
        *,
        in_channels: int,
        cond_dim: int = 0,
        base_channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 2),
        cond_channels: int = 1,
        length: int | None = None,
        time_dim: int | None = None,
        groups: int = 8,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value, low in [("in_channels", in_channels, 1), ("cond_dim", cond_dim, 0), ("base_channels", base_channels, 1),
                                 ("cond_channels", cond_channels, 0), ("groups", groups, 1)]:  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        mults = tuple(channel_mults)
        if not mults or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in mults):
            raise ValueError(f"channel_mults must be a non-empty sequence of positive ints, got {channel_mults!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        concat = cond_dim > 0 and cond_channels > 0
        if concat and (length is None or isinstance(length, bool) or not isinstance(length, int) or length < 1):
            raise ValueError(f"a conditional UNet1D with cond_channels > 0 needs the latent length (a positive int), got length={length!r}")
        self.in_channels, self.cond_dim, self.length = in_channels, cond_dim, length if concat else None
        self.cond_channels = cond_channels if cond_dim > 0 else 0
        self.levels = len(mults)
        time_dim = 4 * base_channels if time_dim is None else time_dim
        self.base_channels = base_channels

        self.time_mlp = nn.Sequential(nn.Linear(base_channels, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.cond_to_emb = nn.Linear(cond_dim, time_dim) if cond_dim > 0 else None
        self.cond_to_map = nn.Linear(cond_dim, self.cond_channels * length) if concat and length is not None else None  # concat: length checked above

        block: dict[str, Any] = dict(emb_dim=time_dim, groups=groups, dropout=dropout)
        dims = [base_channels] + [base_channels * m for m in mults]
        self.init_conv = nn.Conv1d(in_channels + self.cond_channels, base_channels, 3, padding=1)
        self.downs = nn.ModuleList()
        for i in range(self.levels):
            d_in, d_out, last = dims[i], dims[i + 1], i == self.levels - 1
            down = nn.Conv1d(d_in, d_out, 3, padding=1) if last else nn.Conv1d(d_in, d_out, 3, stride=2, padding=1)
            self.downs.append(nn.ModuleList([_ResBlock(d_in, d_in, **block), _ResBlock(d_in, d_in, **block), down]))
        self.mid = nn.ModuleList([_ResBlock(dims[-1], dims[-1], **block), _ResBlock(dims[-1], dims[-1], **block)])
        self.ups = nn.ModuleList()
        for i in reversed(range(self.levels)):
            d_in, d_out, last = dims[i], dims[i + 1], i == 0
            up = nn.Conv1d(d_out, d_in, 3, padding=1) if last else nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv1d(d_out, d_in, 3, padding=1))
            self.ups.append(nn.ModuleList([_ResBlock(d_out + d_in, d_out, **block), _ResBlock(d_out + d_in, d_out, **block), up]))
        self.final_block = _ResBlock(2 * base_channels, base_channels, **block)
        self.final_conv = nn.Conv1d(base_channels, in_channels, 1)
        nn.init.zeros_(self.final_conv.weight)  # predicts eps = 0 at init
        assert self.final_conv.bias is not None
        nn.init.zeros_(self.final_conv.bias)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Predict the noise in ``x``.

        Args:
            x: ``(B, C, T)`` noisy latents.
            t: ``(B,)`` integer diffusion steps (a scalar is broadcast).
            cond: ``(B, cond_dim)`` condition vectors, ``None`` for an unconditional net.
            generator: Randomness for dropout while training.

        Returns:
            ``(B, C, T)`` predicted noise, in the dtype of the weights.
        """
        if x.ndim != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected x of shape (B, {self.in_channels}, T), got {tuple(x.shape)}")
        batch, _, length = x.shape
        if self.length is not None and length != self.length:
            raise ValueError(f"this UNet1D concatenates a condition map of length {self.length}, got x of length {length}")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"expected t of shape ({batch},), got {tuple(t.shape)}")
        if self.cond_dim == 0 and cond is not None:
            raise ValueError("this UNet1D is unconditional (cond_dim=0); pass cond=None")
        if self.cond_dim > 0 and (cond is None or cond.shape != (batch, self.cond_dim)):
            raise ValueError(f"expected cond of shape ({batch}, {self.cond_dim}), got {None if cond is None else tuple(cond.shape)}")

        # Inputs follow the weights' dtype: a UNet moved to bfloat16 or float64 takes float32
        # latents and conditions (under autocast the weights stay float32 and autocast casts).
        dtype = self.init_conv.weight.dtype
        x = x.to(dtype)
        emb = self.time_mlp(_sinusoidal_embedding(t, self.base_channels).to(dtype))  # (B, time_dim)
        if cond is not None:
            cond = cond.to(dtype)
            assert self.cond_to_emb is not None  # cond_dim > 0, checked above
            emb = emb + self.cond_to_emb(cond)
            if self.cond_to_map is not None:
                cmap = self.cond_to_map(cond).reshape(batch, self.cond_channels, length)  # (B, Cc, T)
                x = torch.cat([x, cmap], dim=1)  # (B, C + Cc, T)
        multiple = 2 ** (self.levels - 1)
        padded = -(-length // multiple) * multiple
        x = F.pad(x, (0, padded - length))  # (B, C + Cc, T'), T' a multiple of 2**(levels-1)

        h = self.init_conv(x)  # (B, base, T')
        first = h
        skips = []
        for block1, block2, down in cast(Iterable[nn.ModuleList], self.downs):
            h = block1(h, emb, generator)
            skips.append(h)
            h = block2(h, emb, generator)
            skips.append(h)
            h = down(h)  # halves the length except at the last level
        for block in self.mid:
            h = block(h, emb, generator)
        for block1, block2, up in cast(Iterable[nn.ModuleList], self.ups):
            h = block1(torch.cat([h, skips.pop()], dim=1), emb, generator)
            h = block2(torch.cat([h, skips.pop()], dim=1), emb, generator)
            h = up(h)  # doubles the length except at the first level
        h = self.final_block(torch.cat([h, first], dim=1), emb, generator)  # (B, base, T')
        return self.final_conv(h)[:, :, :length]  # (B, C, T)
