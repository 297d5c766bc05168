"""Net2Net (Chen et al. 2016): grow a trained ConvNet or ResNet without changing its function.

- *Widen* (Net2WiderNet): a wider layer's extra units copy existing ones (drawn at random);
  the next layer divides the weights it reads from every copy by the number of copies,
  so its input sums are unchanged. BatchNorm parameters and statistics are copied along.
  Residual stages share one channel mapping (their shortcuts add channel to channel).
- *Deepen* (Net2DeeperNet): a `paramgen.models.ConvNet` gets extra conv-BN-ReLU blocks
  that compute the identity (a Dirac kernel and a BatchNorm that undoes its own
  normalization) at the end; a `paramgen.models.ResNet` gets extra BasicBlocks at the end
  of each stage whose last BatchNorm is zero, so the residual branch adds nothing.

In eval mode the grown model computes what the source did, up to float rounding, with two
documented exceptions: a ConvNet's extra block max-pools when its input map has a side of
at least 4 (the ConvNet's size rule), which changes the function on large inputs (on 8x8
digits after two blocks it does not pool); and ``noise > 0`` (to break the symmetry of
copies for training) perturbs the copies' incoming weights.

Examples:
    >>> import torch
    >>> from paramgen.models import ConvNet
    >>> torch.manual_seed(0) and None
    >>> small = ConvNet(channels=[4, 8], num_classes=3).eval()
    >>> big = grow_convnet(small, [6, 8, 8], generator=torch.Generator().manual_seed(0)).eval()
    >>> x = torch.randn(5, 1, 8, 8)
    >>> torch.allclose(small(x), big(x), atol=1e-5)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from paramgen.models.convnet import ConvNet
from paramgen.models.resnet import BasicBlock, ResNet

__all__ = ["widen_map", "grow_convnet", "grow_resnet", "can_grow"]


def widen_map(old: int, new: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Net2WiderNet's mapping: unit ``j`` of the wider layer copies unit ``g[j]`` of the old one.

    The first ``old`` units keep their place; the ``new - old`` extra ones copy units drawn
    uniformly with ``generator``.

    Examples:
        >>> widen_map(3, 5, generator=torch.Generator().manual_seed(0))[:3].tolist()
        [0, 1, 2]
    """
    if old < 1 or new < old:
        raise ValueError(f"widen_map: expected 1 <= old <= new, got old={old}, new={new}")
    extra = torch.randint(0, old, (new - old,), generator=generator)
    return torch.cat([torch.arange(old), extra])


def _counts(g: torch.Tensor, old: int) -> torch.Tensor:
    return torch.bincount(g, minlength=old).to(torch.float64)


def _copy_bn(dst: Any, src: Any, g: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst, name).copy_(getattr(src, name)[g])
    dst.num_batches_tracked.copy_(src.num_batches_tracked)


def _copy_weight(dst: torch.Tensor, src: torch.Tensor, g_out: torch.Tensor, g_in: torch.Tensor | None, old_in: int, noise: float, generator: torch.Generator | None) -> None:
    """``dst[o, i] = src[g_out[o], g_in[i]] / copies(g_in[i])``, plus relative noise on copies."""
    w = src.to(torch.float64)[g_out]
    if g_in is not None:
        w = w[:, g_in] / _counts(g_in, old_in)[g_in].reshape(1, -1, *([1] * (w.ndim - 2)))
    if noise > 0:
        extra = torch.arange(len(g_out)) >= src.shape[0]
        eps = torch.randn(w.shape, generator=generator, dtype=torch.float64) * noise * w.std()
        w = w + eps * extra.reshape(-1, *([1] * (w.ndim - 1)))
    dst.copy_(w.to(dst.dtype))


def _identity_block(block: Any) -> None:
    """Make a ConvNet block (conv -> BN -> ReLU) compute the identity on non-negative inputs."""
    conv = block.conv
    with torch.no_grad():
        conv.weight.zero_()
        centre = conv.kernel_size[0] // 2
        for c in range(conv.out_channels):
            conv.weight[(c, c) + (centre,) * (conv.weight.ndim - 2)] = 1.0
        if conv.bias is not None:
            conv.bias.zero_()
        bn: Any = block.bn
        if isinstance(block.bn, nn.modules.batchnorm._BatchNorm):
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
            bn.weight.fill_(float(torch.sqrt(torch.tensor(1.0 + bn.eps, dtype=torch.float64))))  # undoes the normalization
            bn.bias.zero_()


def can_grow(source: Sequence[int], target: Sequence[int]) -> bool:
    """Whether ConvNet channels ``source`` grow into ``target`` (wider or equal blocks, extra blocks at least as wide as the last)."""
    source, target = list(source), list(target)
    if len(target) < len(source) or any(t < s for s, t in zip(source, target, strict=False)):
        return False
    return all(t >= target[len(source) - 1] for t in target[len(source) :])


@torch.no_grad()
def grow_convnet(source: ConvNet, channels: Sequence[int], *, noise: float = 0.0, generator: torch.Generator | None = None) -> ConvNet:
    """A `ConvNet` with ``channels`` that computes what ``source`` does (Net2Net widen + deepen).

    Args:
        source: The trained network (left unchanged).
        channels: The target's channels: at least as many blocks, each of the source's at
            least as wide, extra blocks at least as wide as the source's last.
        noise: Relative standard deviation of noise added to the copies' incoming weights
            (0: exactly function-preserving).
        generator: Draws which units are copied, and the noise.

    Returns:
        The grown network, in eval mode.

    Raises:
        ValueError: ``channels`` cannot be reached by growing (a narrower block, fewer
            blocks, or an extra block narrower than the last one).
    """
    old = list(source.channels)
    channels = [int(c) for c in channels]
    if not can_grow(old, channels):
        raise ValueError(f"grow_convnet: cannot grow channels {old} into {channels}: every block must be at least as wide, extra blocks at least as wide as the last ({old[-1]})")
    first: Any = source.blocks[0]  # module attributes, typed loosely by nn.Module
    kernel = int(first.conv.kernel_size[0])
    batchnorm = isinstance(first.bn, nn.modules.batchnorm._BatchNorm)
    target = ConvNet(in_channels=source.in_channels, channels=channels, num_classes=source.num_classes, kernel_size=kernel, batchnorm=batchnorm, dims=source.dims)  # type: ignore[arg-type]
    # Deepen first at the source's widths (identity blocks), then widen every block.
    path = old + [old[-1]] * (len(channels) - len(old))
    g_prev: torch.Tensor | None = None
    prev_old = source.in_channels
    block: Any
    src: Any
    for i, block in enumerate(target.blocks):
        g = widen_map(path[i], channels[i], generator=generator)
        if i < len(old):
            src = source.blocks[i]
        else:
            src = ConvNet(in_channels=path[i], channels=[path[i]], kernel_size=kernel, batchnorm=batchnorm, dims=source.dims).blocks[0]  # type: ignore[arg-type]
            _identity_block(src)
        _copy_weight(block.conv.weight, src.conv.weight, g, g_prev, prev_old, noise, generator)
        if block.conv.bias is not None:
            block.conv.bias.copy_(src.conv.bias[g])
        if batchnorm:
            _copy_bn(block.bn, src.bn, g)
        g_prev, prev_old = g, path[i]
    _copy_weight(target.head.weight, source.head.weight, torch.arange(source.num_classes), g_prev, prev_old, 0.0, None)
    target.head.bias.copy_(source.head.bias)
    return target.eval()


@torch.no_grad()
def grow_resnet(source: ResNet, *, depth: int, widths: Sequence[int], noise: float = 0.0, generator: torch.Generator | None = None) -> ResNet:
    """A `ResNet` of ``depth`` and ``widths`` that computes what ``source`` does.

    Extra blocks go at the end of each stage with their last BatchNorm set to zero (the
    residual branch adds nothing, also after BatchNorm recalibration); widths grow by
    Net2WiderNet with one channel mapping per stage.

    Args:
        source: The trained network (left unchanged).
        depth: Target depth (``6n + 2``, at least the source's).
        widths: Target stage widths, each at least the source's.
        noise: Relative noise on the copies' incoming weights (0: exactly function-preserving).
        generator: Draws which units are copied, and the noise.

    Returns:
        The grown network, in eval mode.

    Raises:
        ValueError: A shallower depth or a narrower stage.
    """
    widths = [int(w) for w in widths]
    if depth < source.depth or len(widths) != 3 or any(w < s for s, w in zip(source.widths, widths, strict=True)):
        raise ValueError(f"grow_resnet: cannot grow depth {source.depth}, widths {list(source.widths)} into depth {depth}, widths {widths}")
    target = ResNet(depth=depth, widths=widths, in_channels=source.in_channels, num_classes=source.num_classes)
    maps = [widen_map(s, w, generator=generator) for s, w in zip(source.widths, widths, strict=True)]
    old = list(source.widths)
    _copy_weight(target.conv1.weight, source.conv1.weight, maps[0], None, source.in_channels, noise, generator)
    _copy_bn(target.bn1, source.bn1, maps[0])
    g_in, old_in = maps[0], old[0]
    src_stages = (source.layer1, source.layer2, source.layer3)
    dst_stages = (target.layer1, target.layer2, target.layer3)
    for s, (src_stage, dst_stage) in enumerate(zip(src_stages, dst_stages, strict=True)):
        g, w_old = maps[s], old[s]
        dst: Any
        block_src: Any
        for b, dst in enumerate(dst_stage):
            if b < len(src_stage):
                block_src = src_stage[b]
            else:
                block_src = BasicBlock(w_old, w_old)
                block_src.bn2.weight.zero_()
                block_src.bn2.bias.zero_()  # the branch outputs zero: the block is relu(x) = x on x >= 0
            _copy_weight(dst.conv1.weight, block_src.conv1.weight, g, g_in, old_in, noise, generator)  # mid channels share the stage's map
            _copy_bn(dst.bn1, block_src.bn1, g)
            _copy_weight(dst.conv2.weight, block_src.conv2.weight, g, g, w_old, noise, generator)
            _copy_bn(dst.bn2, block_src.bn2, g)
            if len(dst.shortcut) > 0:
                _copy_weight(dst.shortcut[0].weight, block_src.shortcut[0].weight, g, g_in, old_in, noise, generator)
                _copy_bn(dst.shortcut[1], block_src.shortcut[1], g)
            g_in, old_in = g, w_old
    _copy_weight(target.fc.weight, source.fc.weight, torch.arange(source.num_classes), g_in, old_in, 0.0, None)
    target.fc.bias.copy_(source.fc.bias)
    return target.eval()
