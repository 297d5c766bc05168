"""Random draws from a caller's ``torch.Generator``, on the device the result is used on.

A ``torch.Generator`` lives on one device (the CPU or an accelerator) and can only fill
tensors there. These helpers draw on ``generator.device`` and move the result to
``device``, so a CPU generator (the usual seeded one) serves a model on CUDA too, and
the same seed gives the same numbers on every device. With ``generator=None`` they draw
on ``device`` from torch's default generator for it.

Floating draws are made in float32 and then cast to ``dtype``: torch draws other numbers
for another dtype from the same seed, so drawing in the caller's dtype would make a
generator moved to bfloat16 or float64 sample something unrelated to what it samples in
float32. Cast from float32, the same seed gives the same noise in every dtype (rounded
to it), and a model sampled in another precision stays close to its float32 samples.

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
    >>> a64 = randn((32,), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    >>> torch.equal(a64, randn((32,), generator=torch.Generator().manual_seed(1)).double())
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
    """Standard normal noise of ``shape`` drawn from ``generator`` (on its device) in
    float32, on ``device`` in ``dtype``."""
    out = torch.randn(tuple(shape), generator=generator, device=_source(generator, device), dtype=torch.float32)
    return out.to(device=device, dtype=dtype)


def rand(
    shape: Sequence[int], *, generator: torch.Generator | None, device: Device = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Uniform ``[0, 1)`` draws of ``shape`` from ``generator`` (on its device) in float32,
    on ``device`` in ``dtype``.

    A draw just below 1 may round up to 1 in a coarser dtype (bfloat16, float16); callers
    that need the open interval clamp.
    """
    out = torch.rand(tuple(shape), generator=generator, device=_source(generator, device), dtype=torch.float32)
    return out.to(device=device, dtype=dtype)


def randint(high: int, shape: Sequence[int], *, generator: torch.Generator | None, device: Device = None) -> torch.Tensor:
    """Uniform long integers in ``[0, high)`` of ``shape`` from ``generator`` (on its device), on ``device``."""
    return torch.randint(0, high, tuple(shape), generator=generator, device=_source(generator, device)).to(device)


def randperm(n: int, *, generator: torch.Generator | None, device: Device = None) -> torch.Tensor:
    """A random permutation of ``0 .. n - 1`` from ``generator`` (on its device), on ``device``."""
    return torch.randperm(n, generator=generator, device=_source(generator, device)).to(device)
