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
    `paramgen.priors.DiffusionPrior`.

    Args:
        setup: The adapter layout.
        condition: ``"text"`` (a MiniLM embedding of the description plus examples, or of
            the description alone: the raw conditions decide) or ``"onehot"`` (needs ``keys``).
        keys: Task names of a one-hot conditioner.
        tokenizer: Reuse a fitted tokenizer (condition ablations share it; fit with
            ``tokenizer_steps=0``).
        normalizer: Reuse a fitted normalizer, likewise.
    """
    from paramgen import Generator, PerTaskZScore
    from paramgen.conditioners import OneHotConditioner
    from paramgen.priors import DiffusionPrior
    from paramgen.tokenizers import VAETokenizer
    from paramgen.vectorize import LayerVectorizer

    spec = setup.spec()
    vec = LayerVectorizer(spec, chunk_size=chunk_size)
    tok: Any = tokenizer or VAETokenizer(  # a tokenizer module with latent_shape
        rows=vec.rows, width=vec.width, latent_channels=latent_channels, latent_length=latent_length,
        hidden_channels=hidden_channels, num_down=num_down, kl_weight=1e-6, input_noise=input_noise, latent_noise=latent_noise,
    )  # fmt: skip
    if condition == "text":
        cond: TextOrVectorConditioner | OneHotConditioner = TextOrVectorConditioner()
    elif condition == "onehot":
        if not keys:
            raise ValueError("a one-hot generator needs keys (the task names)")
        cond = OneHotConditioner(list(keys))
    else:
        raise ValueError(f"condition must be 'text' or 'onehot', got {condition!r}")
    prior = DiffusionPrior(shape=tok.latent_shape, cond_dim=cond.dim, timesteps=1000, base_channels=prior_channels, channel_mults=(1, 2), ema_decay=0.995)
    return Generator(vectorizer=vec, tokenizer=tok, prior=prior, conditioner=cond, normalizer=normalizer or PerTaskZScore(unknown="global"))


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
    return generator.sample([text], n, generator=g, tasks=[task or "__unknown__"], **sample_kwargs)

