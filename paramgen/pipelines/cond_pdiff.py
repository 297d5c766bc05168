"""Cond P-Diff (Jin et al., 2024): text-conditioned latent diffusion over LoRA weights, wired from a spec.

`cond_pdiff` composes per-task z-scoring, a `paramgen.LayerVectorizer` (each tensor in
rows of ``chunk_size``), a 1D-conv `paramgen.tokenizers.VAETokenizer` with noise on its
input and latent while training, and a conditional 1D-UNet
`paramgen.priors.DiffusionPrior`: the generator ``benchmarks.lora`` fits (with
``seed=None``) and the one `paramgen.lora.generate_adapters` samples from. The VAE's rows and width, the prior's shape and condition size
are inferred.

Examples:
    >>> import torch
    >>> from paramgen.pipelines import cond_pdiff
    >>> sd = {"lora_A": torch.zeros(4, 32), "lora_B": torch.zeros(32, 4)}
    >>> gen = cond_pdiff([sd], condition="task", tasks=["pos", "neg"], chunk_size=64, prior_channels=16)
    >>> gen.tokenizer.latent_shape, gen.prior.cond_dim
    ((8, 16), 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from paramgen.generator import Generator
from paramgen.normalize import Normalizer
from paramgen.pipelines._common import Source, check_tokenizer, conditioner_dim, fit_config_for, local_seed, normalizer_of, read_source, strict_options, task_names

__all__ = ["FIT_DEFAULTS", "cond_pdiff", "fit_config"]

#: Training defaults of ``benchmarks.lora``'s default size where they differ from
#: `paramgen.training.FitConfig`'s: 4000 prior steps at learning rate 1e-3 (FitConfig's
#: 2000 VAE steps, batches of 64 and VAE learning rate 1e-3 are the harness's too).
FIT_DEFAULTS: dict[str, Any] = dict(prior_steps=4000, prior_lr=1e-3)


@strict_options
def cond_pdiff(
    source: Source,
    *,
    condition: Literal["text", "task"] | Any | None = "text",
    tasks: Sequence[str] | None = None,
    seed: int | None = 0,
    chunk_size: int = 1536,
    latent_channels: int = 2,
    latent_length: int = 16,
    hidden_channels: int = 32,
    num_down: int = 1,
    kl_weight: float = 1e-6,
    input_noise: float = 1e-3,
    latent_noise: float = 1e-3,
    timesteps: int = 1000,
    prior_channels: int = 64,
    channel_mults: Sequence[int] = (1, 2),
    ema_decay: float = 0.995,
    normalizer: str | Normalizer | None = "per-task",
    tokenizer: Any = None,
) -> Generator:
    """A Cond P-Diff generator (layer-wise VAE + text-conditioned latent DDPM).

    The defaults are ``benchmarks.lora``'s (its sizes set ``hidden_channels`` and
    ``prior_channels``):

    ===============  ===========  ===============================================================
    option           default      source
    ===============  ===========  ===============================================================
    chunk_size       1536         harness: one row per MiniLM LoRA matrix (384 x 4)
    latent_channels  2            harness
    latent_length    16           harness
    hidden_channels  32           harness (``vae_channels``)
    num_down         1            harness
    kl_weight        1e-6         D2NWG's VAE (Cond P-Diff trains a plain autoencoder)
    input_noise      1e-3         paper (noise augmentation on the autoencoder's input)
    latent_noise     1e-3         paper (amplitude 0.001 on the latent)
    timesteps        1000         paper
    prior_channels   64           harness (its default size passes 32)
    channel_mults    (1, 2)       harness
    ema_decay        0.995        harness
    normalizer       "per-task"   harness (`paramgen.PerTaskZScore`, global for unseen tasks)
    ===============  ===========  ===============================================================

    Components are built in the order tokenizer, prior, conditioner, under ``seed``. A
    ``tokenizer`` passed in is reused (condition ablations share one fitted VAE and fit with
    ``tokenizer_steps=0``); the VAE options are then ignored and nothing is drawn for it.

    Args:
        source: A `paramgen.ParamSpec` (e.g. ``paramgen.lora.LoRASetup.spec()``), a
            `paramgen.zoo.Zoo` of one architecture, or a sequence of state dicts.
        condition: ``"text"``: a MiniLM embedding of each raw condition, a text (or a
            vector passed through; `paramgen.conditioners.TextOrVectorConditioner`, needs
            ``pip install 'paramgen[text]'``); ``"task"``: a one-hot vector per task name
            (`paramgen.conditioners.OneHotConditioner`, the paper's ablation); ``None``:
            unconditional; or a ready conditioner.
        tasks: Task names for ``condition="task"`` (default: the zoo's).
        seed: Seeds the components' initialization on a local random state (the global
            one is neither read nor changed); ``None`` draws from the global generator.
        chunk_size: Row width of the layer-wise layout.
        latent_channels: VAE latent channels.
        latent_length: VAE latent length.
        hidden_channels: VAE trunk width.
        num_down: VAE stride-2 downsamplings.
        kl_weight: VAE KL weight.
        input_noise: Std of noise on the VAE's input while training.
        latent_noise: Std of noise on the latent while training.
        timesteps: Diffusion steps.
        prior_channels: UNet width at its first level.
        channel_mults: UNet width multipliers per level.
        ema_decay: EMA decay of the prior's sampling weights.
        normalizer: ``"per-task"``, ``"per-layer"``, ``"global"``, a ready normalizer, or
            ``None``.
        tokenizer: A ready (e.g. fitted) tokenizer over this layout's rows, or ``None`` to
            build the VAE.

    Returns:
        An unfitted `paramgen.Generator`.

    Raises:
        TypeError: An unknown option (the message lists the valid ones), a source of
            the wrong kind, or a ``tokenizer`` that is not one.
        ValueError: ``condition="task"`` without task names, a ``tokenizer`` whose rows do
            not match the layout, or an option out of range.
        ImportError: ``condition="text"`` without sentence-transformers.
    """
    from paramgen.priors import DiffusionPrior
    from paramgen.tokenizers import VAETokenizer
    from paramgen.vectorize import LayerVectorizer

    spec, zoo_tasks = read_source(source)
    vectorizer = LayerVectorizer(spec, chunk_size=chunk_size)
    conditioner: Any
    if condition == "text":
        from paramgen.conditioners import TextOrVectorConditioner

        conditioner = TextOrVectorConditioner()  # no trainable weights: nothing drawn
    elif condition == "task":
        from paramgen.conditioners import OneHotConditioner

        conditioner = OneHotConditioner(task_names(tasks, zoo_tasks, "cond_pdiff"))  # no weights
    elif condition is None:
        conditioner = None
    elif isinstance(condition, str):
        raise ValueError(f"cond_pdiff: condition must be 'text', 'task', None or a Conditioner, got {condition!r}")
    else:
        conditioner = condition
    prior_cond = 0 if conditioner is None else conditioner_dim(conditioner, "cond_pdiff")
    if tokenizer is not None:
        check_tokenizer(tokenizer, vectorizer.rows, vectorizer.width, "cond_pdiff", f"chunk_size={chunk_size}")
    with local_seed(seed):
        tok = tokenizer if tokenizer is not None else VAETokenizer(
            rows=vectorizer.rows, width=vectorizer.width, latent_channels=latent_channels, latent_length=latent_length,
            hidden_channels=hidden_channels, num_down=num_down, kl_weight=kl_weight, input_noise=input_noise, latent_noise=latent_noise,
        )  # fmt: skip
        prior = DiffusionPrior(
            shape=tok.latent_shape, cond_dim=prior_cond, timesteps=timesteps, base_channels=prior_channels,
            channel_mults=tuple(channel_mults), ema_decay=ema_decay,
        )  # fmt: skip
        norm = normalizer_of(normalizer, spec, "cond_pdiff")
    return Generator(vectorizer=vectorizer, tokenizer=tok, prior=prior, conditioner=conditioner, normalizer=norm)


#: ``fit_config(**overrides)``: `FIT_DEFAULTS` as a `paramgen.training.FitConfig`.
fit_config = fit_config_for(FIT_DEFAULTS, "Cond P-Diff", __name__)
