"""BatchNorm recalibration: recompute running statistics from a few training batches.

Weights written by a generator, copied by Net2Net or drawn at random come with running
statistics that do not match what their own layers produce. `recalibrate_batchnorm`
resets every BatchNorm's statistics and re-estimates them as exact averages over the
batches given (``momentum=None``), with gradients off; everything else is unchanged.

Examples:
    >>> import torch
    >>> from paramgen.models import ConvNet
    >>> net = ConvNet(channels=[4]).eval()
    >>> _ = recalibrate_batchnorm(net, [torch.randn(8, 1, 8, 8) * 3 + 1 for _ in range(2)])
    >>> float(net.blocks[0].bn.running_var.mean()) > 1.5, net.training
    (True, False)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["recalibrate_batchnorm"]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Re-estimate every BatchNorm's running mean and variance on ``batches``; returns ``model``.

    Args:
        model: Any module; its training flags and BatchNorm momenta are restored after.
        batches: Input batches (e.g. about 10 training batches).

    Returns:
        ``model``, recalibrated in place.

    Raises:
        ValueError: No batch was given, or ``model`` has no BatchNorm.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError("recalibrate_batchnorm: the model has no BatchNorm layer")
    flags = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every batch counts the same
    model.eval()
    for norm in norms:
        norm.train()
    seen = 0
    try:
        for x in batches:
            model(x)
            seen += 1
    finally:
        for m, mom in zip(norms, momenta, strict=True):
            m.momentum = mom
        for module, flag in flags.items():
            module.train(flag)
    if seen == 0:
        raise ValueError("recalibrate_batchnorm: expected at least one batch, got none")
    return model
