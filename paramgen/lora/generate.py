"""The Cond P-Diff generator of adapters, and sampling adapters for a task given in words.

`build_generator` composes paramgen's components (`paramgen.normalize.PerTaskZScore`,
`paramgen.tokenizers.VAETokenizer` with input and latent noise,
`paramgen.priors.DiffusionPrior`, a text or one-hot conditioner); `generate_adapters`
samples adapters from a description and examples. The generator classes are imported
inside the functions: this package does not import `paramgen.generator` when loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from paramgen.lora.conditioner import TextOrVectorConditioner
from paramgen.lora.setup import LoRASetup
from paramgen.normalize import PerTaskZScore

__all__ = ["build_generator", "check_description", "generate_adapters"]


def build_generator(
    setup: LoRASetup,
    *,
    condition: str = "text",
    keys: Sequence[str] | None = None,
    chunk_size: int = 1536,
    latent_channels: int = 2,
    latent_length: int = 16,
    hidden_channels: int = 32,
    num_down: int = 1,
    prior_channels: int = 64,
    input_noise: float = 1e-3,
    latent_noise: float = 1e-3,
    tokenizer: nn.Module | None = None,
    normalizer: Any = None,
) -> Any:
    """The Cond P-Diff generator from paramgen's components.

    Per-task z-score normalization (``unknown="global"`` for a held-out task), the rows of a
    `paramgen.vectorize.LayerVectorizer` (each LoRA matrix and the head chunked to
    ``chunk_size``) into a 1D-conv `paramgen.tokenizers.VAETokenizer` with Gaussian noise on
    its input and latent while training, and a conditional 1D-UNet
    `paramgen.priors.DiffusionPrior`: `paramgen.pipelines.cond_pdiff` with these options,
    its weights drawn from the global random generator.

    Args:
        setup: The adapter layout.
        condition: ``"text"`` (a MiniLM embedding of the description plus examples, or of
            the description alone: the raw conditions decide) or ``"onehot"`` (needs ``keys``).
        keys: Task names of a one-hot conditioner.
        tokenizer: Reuse a fitted tokenizer (condition ablations share it; fit with
            ``tokenizer_steps=0``).
        normalizer: Reuse a fitted normalizer, likewise.
    """
    from paramgen.pipelines import cond_pdiff

    cond: Any
    if condition == "text":
        cond = TextOrVectorConditioner()
    elif condition == "onehot":
        if not keys:
            raise ValueError("a one-hot generator needs keys (the task names)")
        cond = "task"
    else:
        raise ValueError(f"condition must be 'text' or 'onehot', got {condition!r}")
    # The global generator draws the weights (seed=None), tokenizer first, then the prior.
    return cond_pdiff(
        setup.spec(), condition=cond, tasks=list(keys) if condition == "onehot" and keys else None, seed=None, chunk_size=chunk_size,
        latent_channels=latent_channels, latent_length=latent_length, hidden_channels=hidden_channels, num_down=num_down,
        prior_channels=prior_channels, input_noise=input_noise, latent_noise=latent_noise, tokenizer=tokenizer,
        normalizer=normalizer if normalizer is not None else "per-task",
    )  # fmt: skip


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
        generator: A fitted text generator (`build_generator`).
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
