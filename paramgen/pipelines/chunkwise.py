"""D2NWG chunk by chunk, for models too large for one row: a chunk VAE and a latent DDPM on chunk positions.

`chunkwise` composes a `paramgen.chunkwise.ChunkwiseGenerator`: every tensor of the model
is cut into chunks of ``chunk_size`` values (a `paramgen.chunks.ChunkLayout`), a
`paramgen.tokenizers.VAETokenizer` encodes one chunk, a `paramgen.priors.DiffusionPrior`
generates its latent conditioned on the chunk's position (a
`paramgen.chunkwise.ChunkPositionConditioner` of ``position_dim``, joined with a task
conditioner if ``condition`` asks for one). Fit it on a `paramgen.chunks.ChunkDataset`
(``gen.fit(data, config=fit_config())``); it samples whole models chunk by chunk,
streaming into a safetensors file. ``benchmarks.scale`` and ``benchmarks.spectrum``
build theirs here.

Examples:
    >>> import torch
    >>> from paramgen.pipelines import chunkwise
    >>> sd = {"w": torch.zeros(8, 16), "b": torch.zeros(8)}
    >>> gen = chunkwise([sd], chunk_size=32, hidden_channels=8, base_channels=8, latent_length=8)
    >>> gen.layout.num_chunks, gen.generator.prior.cond_dim
    (5, 64)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from paramgen.pipelines._common import Source, check_tokenizer, conditioner_dim, fit_config_for, local_seed, read_source, strict_options, task_names

__all__ = ["DEFAULT_CHUNK_SIZE", "FIT_DEFAULTS", "chunkwise", "fit_config"]

#: Values per chunk when the source does not fix them (``benchmarks.scale``'s MiniLM run).
DEFAULT_CHUNK_SIZE = 4096

#: Training defaults of ``benchmarks.scale``'s chunk-wise MiniLM fit where they differ
#: from `paramgen.training.FitConfig`'s: prior learning rate 1e-3, a cosine schedule after
#: 50 warm-up steps, gradients clipped at norm 1.
FIT_DEFAULTS: dict[str, Any] = dict(prior_lr=1e-3, schedule="cosine", warmup_steps=50, max_grad_norm=1.0)


def _layout(source: Any, chunk_size: int | None, include: Sequence[str] | None) -> Any:
    """The chunk layout of ``source`` (a layout, a chunk dataset, or anything `read_source` reads)."""
    from paramgen.chunks import ChunkLayout

    given = getattr(source, "layout", source)
    if isinstance(given, ChunkLayout):
        if chunk_size is not None and chunk_size != given.chunk_size:
            raise ValueError(f"chunkwise: chunk_size={chunk_size} but the source's layout cuts chunks of {given.chunk_size}")
        if include is not None:
            raise ValueError("chunkwise: include= selects tensors of a spec; the source's layout already chose them")
        return given
    spec, _ = read_source(source)
    return ChunkLayout(spec, DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size, include=include)


@strict_options
def chunkwise(
    source: Source,
    *,
    condition: Literal["task"] | Any | None = None,
    tasks: Sequence[str] | None = None,
    seed: int | None = 0,
    chunk_size: int | None = None,
    include: Sequence[str] | None = None,
    latent_channels: int = 4,
    latent_length: int = 32,
    hidden_channels: int = 32,
    num_down: int = 2,
    kl_weight: float = 1e-6,
    input_noise: float = 1e-3,
    latent_noise: float = 1e-2,
    position_dim: int = 64,
    cond_dim: int = 64,
    timesteps: int = 1000,
    base_channels: int = 32,
    channel_mults: Sequence[int] = (1, 2),
    ema_decay: float = 0.995,
    model_config: Any = None,
    adapter_config: Any = None,
    tokenizer: Any = None,
) -> Any:
    """A chunk-wise D2NWG generator (`paramgen.chunkwise.ChunkwiseGenerator`) for the model of ``source``.

    The defaults are ``benchmarks.scale``'s default size (all of MiniLM from its one
    checkpoint):

    ===============  ======  ===================================================================
    option           default source
    ===============  ======  ===================================================================
    chunk_size       4096    harness (`DEFAULT_CHUNK_SIZE`; a layout source keeps its own)
    latent_channels  4       harness
    latent_length    32      harness
    hidden_channels  32      harness (``vae_channels``)
    num_down         2       `paramgen.tokenizers.VAETokenizer`'s default
    kl_weight        1e-6    D2NWG's VAE
    input_noise      1e-3    harness
    latent_noise     1e-2    harness (a tenth of the model-wise D2NWG's)
    position_dim     64      harness
    timesteps        1000    paper
    base_channels    32      harness (``prior_channels``)
    channel_mults    (1, 2)  harness
    ema_decay        0.995   harness
    ===============  ======  ===================================================================

    Components are built under ``seed`` in the order tokenizer, prior, task conditioner
    (``condition="task"``), position conditioner. A ``tokenizer`` passed in is reused (the
    VAE options are then ignored and nothing is drawn for it).

    Args:
        source: A `paramgen.chunks.ChunkLayout`, a `paramgen.chunks.ChunkDataset` (its
            layout), a `paramgen.ParamSpec`, a `paramgen.zoo.Zoo` of one architecture (its
            spec; its tasks for ``condition="task"``), or a sequence of state dicts (the
            spec of the first).
        condition: ``None``: chunk positions only (one model, or a zoo without task
            conditions); ``"task"``: also an `paramgen.conditioners.IndexConditioner` of
            ``cond_dim`` over ``tasks`` (raw conditions are task names); or a ready task
            conditioner (raw conditions are what it takes).
        tasks: Task names for ``condition="task"`` (default: the zoo's).
        seed: Seeds the components' initialization on a local random state (the global
            one is neither read nor changed); ``None`` draws from the global generator.
        chunk_size: Values per chunk (``None``: the layout's for a layout source, else
            `DEFAULT_CHUNK_SIZE`).
        include: Names of the tensors to generate (``None``: all; not with a layout source).
        latent_channels: VAE latent channels.
        latent_length: VAE latent length.
        hidden_channels: VAE trunk width.
        num_down: VAE stride-2 downsamplings.
        kl_weight: VAE KL weight.
        input_noise: Std of noise on the VAE's input while training.
        latent_noise: Std of noise on the latent while training.
        position_dim: Size of the chunk-position condition.
        cond_dim: Size of the task condition of ``condition="task"``.
        timesteps: Diffusion steps.
        base_channels: UNet width at its first level.
        channel_mults: UNet width multipliers per level.
        ema_decay: EMA decay of the prior's sampling weights.
        model_config: The Hugging Face ``config.json`` of the generated model (sampling
            into a folder then writes a model folder); see `ChunkwiseGenerator`.
        adapter_config: The ``adapter_config.json`` of generated PEFT adapters.
        tokenizer: A ready (e.g. fitted) tokenizer of one chunk (rows 1, width
            ``chunk_size``), or ``None`` to build the VAE.

    Returns:
        An unfitted `paramgen.chunkwise.ChunkwiseGenerator`; fit it with
        ``gen.fit(ChunkDataset(gen.layout, files), config=fit_config())``.

    Raises:
        TypeError: An unknown option (the message lists the valid ones), a source of the
            wrong kind, or a ``tokenizer`` that is not one.
        ValueError: ``condition="task"`` without task names, a ``chunk_size`` other than
            a layout source's, a ``tokenizer`` of another width, or an option out of range.
    """
    from paramgen.chunkwise import ChunkwiseGenerator
    from paramgen.priors import DiffusionPrior
    from paramgen.tokenizers import VAETokenizer

    layout = _layout(source, chunk_size, include)
    task: Any = None
    if condition == "task":
        zoo_tasks = tuple(source.tasks) if hasattr(source, "tasks") and hasattr(source, "spec_ids") else None
        names = task_names(tasks, zoo_tasks, "chunkwise")
        task_dim = cond_dim
    elif condition is None:
        task_dim = 0
    elif isinstance(condition, str):
        raise ValueError(f"chunkwise: condition must be 'task', None or a Conditioner, got {condition!r}")
    else:
        task = condition
        task_dim = conditioner_dim(condition, "chunkwise")
    if tokenizer is not None:
        check_tokenizer(tokenizer, 1, layout.chunk_size, "chunkwise", f"chunk_size={layout.chunk_size}")
    with local_seed(seed):
        tok = tokenizer if tokenizer is not None else VAETokenizer(
            rows=1, width=layout.chunk_size, latent_channels=latent_channels, latent_length=latent_length, hidden_channels=hidden_channels,
            num_down=num_down, kl_weight=kl_weight, input_noise=input_noise, latent_noise=latent_noise,
        )  # fmt: skip
        prior = DiffusionPrior(
            shape=tok.latent_shape, cond_dim=position_dim + task_dim, timesteps=timesteps, base_channels=base_channels,
            channel_mults=tuple(channel_mults), ema_decay=ema_decay,
        )  # fmt: skip
        if condition == "task":
            from paramgen.conditioners import IndexConditioner

            task = IndexConditioner(names, dim=cond_dim)
        return ChunkwiseGenerator.build(layout, tokenizer=tok, prior=prior, task_conditioner=task, position_dim=position_dim, model_config=model_config, adapter_config=adapter_config)


#: ``fit_config(**overrides)``: `FIT_DEFAULTS` as a `paramgen.training.FitConfig`.
fit_config = fit_config_for(FIT_DEFAULTS, "The chunk-wise D2NWG", __name__)
