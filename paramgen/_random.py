"""Random draws from a caller's ``torch.Generator``, on the device the result is used on.

A ``torch.Generator`` lives on one device (the CPU or an accelerator) and can only fill
tensors there. These helpers draw on ``generator.device`` and move the result to
``device``, so a CPU generator (the usual seeded one) serves a model on CUDA too, and
the same seed gives the same numbers on every device. With ``generator=None`` they draw
on ``device`` from torch's default generator for it.

Examples:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> randn((2, 3), generator=g, device="cpu").shape
    torch.Size([2, 3])
    >>> a = rand((4,), generator=torch.Generator().manual_seed(1))
    >>> torch.equal(a, rand((4,), generator=torch.Generator().manual_seed(1)))
    True
    >>> int(randint(5, (100,), generator=g).max()) < 5
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["randn", "rand", "randint", "randperm"]

Device = torch.device | str | None


def _source(generator: torch.Generator | None, device: Device) -> Device:
    return device if generator is None else generator.device


def randn(
    shape: Sequence[int], *, generator: torch.Generator | None, device: Device = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Standard normal noise of ``shape`` drawn from ``generator`` (on its device), on ``device``."""
    out = torch.randn(tuple(shape), generator=generator, device=_source(generator, device), dtype=dtype)
    return out.to(device)


def rand(
    shape: Sequence[int], *, generator: torch.Generator | None, device: Device = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Uniform ``[0, 1)`` draws of ``shape`` from ``generator`` (on its device), on ``device``."""
    return torch.rand(tuple(shape), generator=generator, device=_source(generator, device), dtype=dtype).to(device)


def randint(high: int, shape: Sequence[int], *, generator: torch.Generator | None, device: Device = None) -> torch.Tensor:
    """Uniform long integers in ``[0, high)`` of ``shape`` from ``generator`` (on its device), on ``device``."""
    return torch.randint(0, high, tuple(shape), generator=generator, device=_source(generator, device)).to(device)


def randperm(n: int, *, generator: torch.Generator | None, device: Device = None) -> torch.Tensor:
    """A random permutation of ``0 .. n - 1`` from ``generator`` (on its device), on ``device``."""
    return torch.randperm(n, generator=generator, device=_source(generator, device)).to(device)
