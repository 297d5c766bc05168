"""Sampling adapters for a task given in words.

`generate_adapters` samples adapters from a description and examples, with a text
generator built by `paramgen.pipelines.cond_pdiff` (Cond P-Diff: per-task z-scoring, a
layer-wise VAE, a text-conditioned latent DDPM) and fitted on a zoo of adapters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from paramgen.normalize import PerTaskZScore

__all__ = ["check_description", "generate_adapters"]


def check_description(description: Any) -> str:
    """A non-empty description, stripped; raises ``ValueError`` naming what was expected."""
    if not isinstance(description, str) or not description.strip():
        raise ValueError(f"expected a non-empty task description (a string), got {description!r}")
    return description.strip()


def generate_adapters(
    generator: Any,
    description: str,
    examples: Sequence[str] = (),
    *,
    n: int = 1,
    task: str | None = None,
    seed: int = 0,
    **sample_kwargs: Any,
) -> list[dict[str, torch.Tensor]]:
    """Sample ``n`` adapters (heads padded) for a task given in words.

    Args:
        generator: A fitted text generator (`paramgen.pipelines.cond_pdiff`).
        description: What the task is (must not be empty).
        examples: Example strings (``"text -> label"``); Cond P-Diff uses two.
        n: Adapters to sample.
        task: The task's name if it was in the zoo (its normalization statistics); an
            unknown or ``None`` task uses the zoo-wide statistics.
        seed: Seeds the sampling.
    """
    from paramgen.conditioners import describe_condition

    text = describe_condition(check_description(description), list(examples))
    g = torch.Generator().manual_seed(seed)
    if isinstance(generator.normalizer, PerTaskZScore):
        sample_kwargs["tasks"] = [task or "__unknown__"]
    elif task is not None:
        raise ValueError(f"task={task!r} is for a generator with a per-task normalizer (PerTaskZScore); this one has {type(generator.normalizer).__name__}")
    return generator.sample([text], n, generator=g, **sample_kwargs)
