"""CIFAR-style residual networks (He et al. 2016, section 4.2): ResNet-20/32/44/56/110.

A 3x3 stem, three stages of ``n`` BasicBlocks at widths 16/32/64 (the second and third
start with stride 2), global average pooling and a linear ``fc``: depth ``6n + 2``. When
a block changes shape its shortcut is a 1x1 convolution + BatchNorm (the paper's
option B); otherwise it is the identity.

Examples:
    >>> import torch
    >>> net = resnet20()
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> net.blocks_per_stage
    3
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock", "ResNet", "resnet20"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection.

    Keys: ``conv1``, ``bn1``, ``conv2``, ``bn2`` and, when the shape changes,
    ``shortcut.0`` (1x1 conv) and ``shortcut.1`` (BatchNorm).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first convolution (and of the shortcut).

    Examples:
        >>> import torch
        >>> BasicBlock(16, 32, stride=2)(torch.zeros(1, 16, 8, 8)).shape
        torch.Size([1, 32, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()  # identity, and no state-dict keys
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, C_out, H / s, W / s)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet of depth ``6n + 2`` with three stages of ``n`` BasicBlocks.

    Keys: stem ``conv1``/``bn1``, blocks ``layer{1,2,3}.{i}.*`` (see `BasicBlock`),
    head ``fc``. Convolutions get He (Kaiming normal, fan-out) initialization as in the
    paper; parameters are drawn from torch's global generator, so seed it with
    ``torch.manual_seed`` for reproducible checkpoints.

    Args:
        depth: Total number of weighted layers, ``6n + 2`` with ``n >= 1`` (20, 32, 44, 56, 110, ...).
        num_classes: Output width of ``fc``.
        in_channels: Input channels.
        widths: Channels of the three stages.

    Examples:
        >>> import torch
        >>> net = ResNet(depth=32, num_classes=100)
        >>> net(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 100])
        >>> [len(net.layer1), len(net.layer2), len(net.layer3)]
        [5, 5, 5]
    """

    def __init__(
        self,
        *,
        depth: int = 20,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: Sequence[int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"ResNet: expected depth = 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth}")
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or any(w < 1 for w in widths):
            raise ValueError(f"ResNet: expected three positive stage widths, got {list(widths)}")
        if in_channels < 1 or num_classes < 1:
            raise ValueError(
                f"ResNet: expected in_channels >= 1 and num_classes >= 1, got {in_channels} and {num_classes}"
            )
        self.depth = int(depth)
        self.blocks_per_stage = (self.depth - 2) // 6
        self.widths = widths
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)

        self.conv1 = nn.Conv2d(self.in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._stage(widths[0], widths[0], stride=1)
        self.layer2 = self._stage(widths[0], widths[1], stride=2)
        self.layer3 = self._stage(widths[1], widths[2], stride=2)
        self.fc = nn.Linear(widths[2], self.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _stage(self, in_channels: int, out_channels: int, *, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_channels, out_channels, stride=stride)]
        blocks += [BasicBlock(out_channels, out_channels) for _ in range(self.blocks_per_stage - 1)]
        return nn.Sequential(*blocks)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled features.

        Args:
            x: ``(B, in_channels, H, W)`` images (32x32 for CIFAR; any size >= 4 works).

        Returns:
            ``(B, widths[2])`` features.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ResNet: expected input (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        x = F.relu(self.bn1(self.conv1(x)))  # (B, w0, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, w2, H / 4, W / 4)
        return x.mean(dim=(2, 3))  # (B, w2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)``; see `features` for the input layout."""
        return self.fc(self.features(x))


def resnet20(**kwargs: Any) -> ResNet:
    """ResNet-20 (``depth=20``, three blocks per stage, about 0.27M parameters).

    Args:
        **kwargs: Other keyword arguments of `ResNet` (``num_classes``,
            ``in_channels``, ``widths``).

    Examples:
        >>> sum(p.numel() for p in resnet20().parameters())
        272474
    """
    if "depth" in kwargs:
        raise ValueError(f"resnet20: depth is fixed at 20, got depth={kwargs['depth']}")
    return ResNet(depth=20, **kwargs)
