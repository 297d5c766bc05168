"""When a data-dependent input check is free.

Checking that a tensor is finite reads a value back to the host. On the CPU that costs
nothing; on an accelerator it stalls the device, once per training step in a loss. So the
losses check values only where they live on the host; on an accelerator the training
engine (`paramgen.training`) checks its inputs once and reports a non-finite loss with its
stage and step. Shapes and dtypes are checked everywhere.

Examples:
    >>> import torch
    >>> host_values(torch.zeros(2))
    True
"""

from __future__ import annotations

import torch

__all__ = ["host_values"]


def host_values(x: torch.Tensor) -> bool:
    """Whether ``x``'s values can be checked without a device synchronization.

    ``meta`` counts as the host: paramgen's fake-device tests keep data behind it.
    """
    return x.device.type in ("cpu", "meta")
