"""Small convolutional classifiers: a size-agnostic ``ConvNet`` and the few-shot ``Conv4``.

``ConvNet`` ends in global average pooling, so one set of weights runs on 8x8 digits,
28x28 Fashion-MNIST images and (with ``dims=1``) length-40 MNIST-1D signals; its parameter
count depends only on the channels. ``Conv4`` is the standard few-shot backbone
(Vinyals et al. 2016; Snell et al. 2017): four conv3x3-BN-ReLU-maxpool blocks.

Examples:
    >>> import torch
    >>> net = ConvNet()
    >>> net(torch.zeros(2, 1, 8, 8)).shape, net(torch.zeros(2, 1, 28, 28)).shape
    (torch.Size([2, 10]), torch.Size([2, 10]))
    >>> Conv4().features(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 64])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvNet", "Conv4"]

# ConvNet pools a feature map only while every spatial side is at least this large, so
# pooling never shrinks a side below 2 and never fails, whatever the input size.
_MIN_SIDE_TO_POOL = 4


class _ConvBlock(nn.Module):
    """``conv -> (BatchNorm) -> ReLU``; keys ``conv.*`` and ``bn.*``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        batchnorm: bool,
        dims: int,
        bias: bool,
    ) -> None:
        super().__init__()
        conv_cls = nn.Conv1d if dims == 1 else nn.Conv2d
        bn_cls = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        self.conv = conv_cls(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias
        )
        self.bn = bn_cls(out_channels) if batchnorm else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def _check_channels(name: str, channels: Sequence[int]) -> tuple[int, ...]:
    channels = tuple(int(c) for c in channels)
    if not channels or any(c < 1 for c in channels):
        raise ValueError(f"{name}: expected a non-empty list of positive channels, got {list(channels)}")
    return channels


class ConvNet(nn.Module):
    """Blocks of conv -> (BatchNorm) -> ReLU -> (max-pool 2), global average pooling, linear head.

    Pooling rule: after each block the feature map is max-pooled by 2 only if every
    spatial side is at least 4, so that no side drops below 2. With the default two blocks
    an 8x8 input goes 8 -> 4 -> 2, a 28x28 input 28 -> 14 -> 7 and a length-40 signal
    40 -> 20 -> 10. The rule depends on the input size only, never on the data, and adds
    no parameters, so the same weights serve every input size.

    Convolutions use "same" padding (``kernel_size // 2``; use odd kernels) and no bias when
    followed by BatchNorm, whose shift makes a bias redundant.

    Args:
        in_channels: Input channels.
        channels: Output channels of each block, in order.
        num_classes: Output width of ``head``.
        kernel_size: Odd convolution kernel size.
        batchnorm: Add BatchNorm after each convolution.
        dims: 2 for images ``(B, C, H, W)``, 1 for signals ``(B, C, L)``.

    Examples:
        >>> import torch
        >>> net = ConvNet(dims=1)
        >>> net(torch.zeros(4, 1, 40)).shape
        torch.Size([4, 10])
        >>> sum(p.numel() for p in ConvNet().parameters())
        1442
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        channels: Sequence[int] = (8, 16),
        num_classes: int = 10,
        kernel_size: int = 3,
        batchnorm: bool = True,
        dims: Literal[1, 2] = 2,
    ) -> None:
        super().__init__()
        channels = _check_channels("ConvNet", channels)
        if dims not in (1, 2):
            raise ValueError(f"ConvNet: expected dims 1 or 2, got {dims!r}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"ConvNet: expected an odd kernel_size >= 1, got {kernel_size}")
        if in_channels < 1 or num_classes < 1:
            raise ValueError(
                f"ConvNet: expected in_channels >= 1 and num_classes >= 1, "
                f"got {in_channels} and {num_classes}"
            )
        self.in_channels = int(in_channels)
        self.channels = channels
        self.num_classes = int(num_classes)
        self.dims = int(dims)

        widths = (self.in_channels, *channels)
        self.blocks = nn.ModuleList(
            _ConvBlock(a, b, kernel_size=kernel_size, batchnorm=batchnorm, dims=self.dims, bias=not batchnorm)
            for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.head = nn.Linear(channels[-1], self.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled features.

        Args:
            x: ``(B, in_channels, H, W)`` images (``dims=2``) or ``(B, in_channels, L)``
                signals (``dims=1``) of any spatial size.

        Returns:
            ``(B, channels[-1])`` features.
        """
        if x.dim() != self.dims + 2 or x.shape[1] != self.in_channels:
            layout = "(B, C, L)" if self.dims == 1 else "(B, C, H, W)"
            raise ValueError(
                f"ConvNet: expected input {layout} with C={self.in_channels}, got {tuple(x.shape)}"
            )
        pool = F.max_pool1d if self.dims == 1 else F.max_pool2d
        for block in self.blocks:
            x = block(x)  # (B, C_i, *spatial)
            if min(x.shape[2:]) >= _MIN_SIDE_TO_POOL:
                x = pool(x, 2)  # (B, C_i, *spatial // 2)
        return x.mean(dim=tuple(range(2, x.dim())))  # (B, C_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch; see `features` for the input layout.

        Returns:
            ``(B, num_classes)`` logits.
        """
        return self.head(self.features(x))


class Conv4(nn.Module):
    """The few-shot Conv4 backbone: four ``conv3x3 -> BN -> ReLU -> maxpool 2`` blocks.

    Supported inputs: square or rectangular images with every side at least 16 (four
    halvings). The flattened feature map has ``width * (H // 16) * (W // 16)`` entries:
    ``width`` for sides 16-31 (28x28 Omniglot/MNIST: 28 -> 14 -> 7 -> 3 -> 1) and
    ``25 * width`` = 1600 for 84x84 mini-ImageNet. The optional head is sized for inputs of
    side ``image_size``; other sizes still work with `features`.

    Convolutions keep their bias, as in the reference implementation (Snell et al. 2017),
    so parameter counts match the usual ones (113,088 for RGB inputs with width 64).

    Args:
        in_channels: Input channels (1 for Omniglot/MNIST, 3 for mini-ImageNet).
        width: Channels of every block.
        num_classes: Output width of a linear ``head``; ``None`` means no head, and
            ``forward`` returns the features.
        image_size: Input side the head is sized for.

    Examples:
        >>> import torch
        >>> net = Conv4(num_classes=5)
        >>> net(torch.zeros(3, 1, 28, 28)).shape
        torch.Size([3, 5])
        >>> Conv4(in_channels=3).features(torch.zeros(1, 3, 84, 84)).shape
        torch.Size([1, 1600])
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        width: int = 64,
        num_classes: int | None = None,
        image_size: int = 28,
    ) -> None:
        super().__init__()
        if in_channels < 1 or width < 1:
            raise ValueError(
                f"Conv4: expected in_channels >= 1 and width >= 1, got {in_channels} and {width}"
            )
        if image_size < 16:
            raise ValueError(f"Conv4: expected image_size >= 16 (four 2x poolings), got {image_size}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"Conv4: expected num_classes >= 1 or None, got {num_classes}")
        self.in_channels = int(in_channels)
        self.width = int(width)
        self.num_classes = num_classes
        self.image_size = int(image_size)
        self.blocks = nn.ModuleList(
            _ConvBlock(c, self.width, kernel_size=3, batchnorm=True, dims=2, bias=True)
            for c in (self.in_channels, self.width, self.width, self.width)
        )
        self.feature_dim = self.width * (self.image_size // 16) ** 2
        self.head = nn.Linear(self.feature_dim, num_classes) if num_classes is not None else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened features of a batch.

        Args:
            x: ``(B, in_channels, H, W)`` images with ``H, W >= 16``.

        Returns:
            ``(B, width * (H // 16) * (W // 16))`` features.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels or min(x.shape[2:]) < 16:
            raise ValueError(
                f"Conv4: expected input (B, {self.in_channels}, H, W) with H, W >= 16, "
                f"got {tuple(x.shape)}"
            )
        for block in self.blocks:
            x = F.max_pool2d(block(x), 2)  # (B, width, H // 2, W // 2)
        return x.flatten(1)  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)``, or features ``(B, D)`` when there is no head."""
        z = self.features(x)
        if self.head is None:
            return z
        if z.shape[1] != self.feature_dim:
            raise ValueError(
                f"Conv4: the head expects {self.feature_dim} features (inputs of side "
                f"{self.image_size}), got {z.shape[1]} from input {tuple(x.shape)}"
            )
        return self.head(z)
