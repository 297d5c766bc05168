"""Input checks shared by the priors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["check_cond", "reject_unknown_options"]


def reject_unknown_options(where: str, unknown: Mapping[str, Any], valid: Sequence[str]) -> None:
    """Raise a `TypeError` naming ``where`` and its ``valid`` options if ``unknown`` is not empty.

    A prior's ``sample`` collects keywords it does not take in ``**unknown`` so that a
    keyword meant for another prior (``temperature=`` to a diffusion prior) fails here with
    the valid options listed, not as a bare "unexpected keyword argument" deep inside.

    Examples:
        >>> reject_unknown_options("DiffusionPrior.sample", {"temperature": 0.7}, ("sampler", "steps"))
        Traceback (most recent call last):
        ...
        TypeError: DiffusionPrior.sample got temperature=0.7; valid options: sampler, steps
    """
    if unknown:
        got = ", ".join(f"{k}={v!r}" for k, v in sorted(unknown.items()))
        raise TypeError(f"{where} got {got}; valid options: {', '.join(valid) if valid else 'none'}")


def check_cond(cond: torch.Tensor | None, rows: int, cond_dim: int, *, values: bool = True) -> torch.Tensor | None:
    """Validate condition vectors ``(rows, cond_dim)`` (``None`` for an unconditional prior);
    ``values=False`` skips the finiteness check (a training step on an accelerator)."""
    if cond_dim == 0:
        if cond is not None:
            got = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
            raise ValueError(f"this prior is unconditional (cond_dim=0); pass cond=None, got {got}")
        return None
    if cond is None:
        raise ValueError(f"this prior is conditional: expected cond of shape ({rows}, {cond_dim}), got None")
    if not isinstance(cond, torch.Tensor) or tuple(cond.shape) != (rows, cond_dim):
        got = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
        raise ValueError(f"expected cond of shape ({rows}, {cond_dim}), got {got}")
    if not cond.is_floating_point():
        raise TypeError(f"expected floating condition vectors, got {cond.dtype}")
    if values and not torch.isfinite(cond).all():
        raise ValueError("condition vectors contain NaN or Inf")
    return cond
