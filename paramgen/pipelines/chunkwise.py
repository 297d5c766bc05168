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

Capacity is set by ``compression``, the values of a chunk per latent value (the latent
length follows; 1 keeps as many latent values as weights), and logged at INFO by the
``paramgen.pipelines`` logger. ``positional=True`` builds a
`paramgen.tokenizers.PositionalVAETokenizer`, whose encoder and decoder also see the
chunk's position (``position_bias=True`` adds a learned per-chunk table to its output), so
that what is specific to a position need not pass through the latent. ``base=`` pins a
base checkpoint: the generator then learns and samples deltas over it.

Examples:
    >>> import torch
    >>> from paramgen.pipelines import chunkwise
    >>> sd = {"w": torch.zeros(8, 16), "b": torch.zeros(8)}
    >>> gen = chunkwise([sd], chunk_size=32, hidden_channels=8, base_channels=8, latent_length=8)
    >>> gen.layout.num_chunks, gen.generator.prior.cond_dim
    (5, 64)
    >>> gen = chunkwise([sd], chunk_size=32, compression=2, positional=True, hidden_channels=8, base_channels=8)
    >>> gen.generator.tokenizer.latent_shape, gen.generator.tokenizer.compression
    ((4, 4), 2.0)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

from paramgen.pipelines._common import Source, check_tokenizer, conditioner_dim, fit_config_for, local_seed, read_source, strict_options, task_names

__all__ = ["DEFAULT_CHUNK_SIZE", "DEFAULT_LATENT_LENGTH", "FIT_DEFAULTS", "chunkwise", "fit_config", "latent_length_for"]

logger = logging.getLogger("paramgen.pipelines")

#: Values per chunk when the source does not fix them (``benchmarks.scale``'s MiniLM run).
DEFAULT_CHUNK_SIZE = 4096

#: Latent length per chunk when neither ``latent_length`` nor ``compression`` is given.
DEFAULT_LATENT_LENGTH = 32

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


def latent_length_for(chunk_size: int, latent_channels: int, compression: float) -> int:
    """The latent length at which a chunk of ``chunk_size`` values is ``compression`` values
    per latent value: ``chunk_size / (latent_channels * compression)``, exactly.

    Raises:
        ValueError: ``compression`` below 1, or a length that is not a whole number (the
            message names the valid compressions, ``chunk_size / (latent_channels * L)``
            for a whole ``L``, and lists the whole ones).

    Examples:
        >>> latent_length_for(4096, 4, 32), latent_length_for(4096, 4, 1)
        (32, 1024)
        >>> latent_length_for(96, 4, 5)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: chunkwise: compression=5 ... gives a latent length of 4.8, not a whole number; ... the whole ones 1, 2, 3, 4, 6, 8, 12, 24
    """
    if isinstance(compression, bool) or not isinstance(compression, (int, float)) or not compression >= 1 or compression == float("inf"):
        raise ValueError(f"chunkwise: compression (values per latent value) must be a finite number >= 1, got {compression!r}")
    per_channel = chunk_size / latent_channels
    length = per_channel / compression
    if round(length) >= 1 and abs(length - round(length)) <= 1e-9 * length:  # exact, up to the float a ratio was written as
        return int(round(length))
    longest = int(per_channel)
    whole = [chunk_size // (latent_channels * n) for n in range(1, longest + 1) if chunk_size % (latent_channels * n) == 0]
    raise ValueError(
        f"chunkwise: compression={compression:g} with chunk_size={chunk_size} and latent_channels={latent_channels} gives a latent length of "
        f"{length:.4g}, not a whole number; valid compressions are chunk_size / (latent_channels * latent_length) for latent_length "
        + (f"1..{longest}, the whole ones {', '.join(f'{c:g}' for c in sorted(whole))}" if longest >= 1 else "(none: latent_channels > chunk_size)")
    )


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
    latent_length: int | None = None,
    compression: float | None = None,
    hidden_channels: int = 32,
    num_down: int = 2,
    kl_weight: float = 1e-6,
    input_noise: float = 1e-3,
    latent_noise: float = 1e-2,
    position_dim: int = 64,
    positional: bool = False,
    position_bias: bool = False,
    task_positions: bool = False,
    cond_dim: int = 64,
    timesteps: int = 1000,
    base_channels: int = 32,
    channel_mults: Sequence[int] = (1, 2),
    ema_decay: float = 0.995,
    model_config: Any = None,
    adapter_config: Any = None,
    tokenizer: Any = None,
    base: Any = None,
) -> Any:
    """A chunk-wise D2NWG generator (`paramgen.chunkwise.ChunkwiseGenerator`) for the model of ``source``.

    The defaults are ``benchmarks.scale``'s default size (all of MiniLM from its one
    checkpoint):

    ===============  ======  ===================================================================
    option           default source
    ===============  ======  ===================================================================
    chunk_size       4096    harness (`DEFAULT_CHUNK_SIZE`; a layout source keeps its own)
    latent_channels  4       harness
    latent_length    32      harness (`DEFAULT_LATENT_LENGTH`; or from ``compression``)
    compression      ---     32 at the defaults (4096 values into 4 x 32)
    hidden_channels  32      harness (``vae_channels``)
    num_down         2       `paramgen.tokenizers.VAETokenizer`'s default
    kl_weight        1e-6    D2NWG's VAE
    input_noise      1e-3    harness (p-diff's input augmentation)
    latent_noise     1e-2    harness (p-diff's latent augmentation; a tenth of D2NWG's)
    position_dim     64      harness
    positional       False   the plain VAE (issue 20: ``True`` for weights that work)
    position_bias    False   (a table as large as the model: only with ``positional``)
    task_positions   False   (positions per (task, chunk): ``positional`` and ``condition="task"``)
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
        latent_length: VAE latent length (``None``: `DEFAULT_LATENT_LENGTH`, or the one
            ``compression`` gives; not both).
        compression: Values of a chunk per latent value, down to 1 (no compression): the
            latent length is ``chunk_size / (latent_channels * compression)``, which must
            be a whole number (`latent_length_for`; the error lists the valid values). It
            is logged, and recorded in the saved config through the tokenizer's
            ``width``, ``latent_channels`` and ``latent_length``. The decoder's last
            linear map reads ``hidden_channels // 8 * latent_length * 2**num_down`` values:
            at low compression, make that at least ``chunk_size`` too.
        hidden_channels: VAE trunk width.
        num_down: VAE stride-2 downsamplings.
        kl_weight: VAE KL weight.
        input_noise: Std of Gaussian noise on the VAE's input while training (p-diff's
            augmentation: the decoder learns a neighbourhood of each chunk).
        latent_noise: Std of Gaussian noise on the sampled latent while training (p-diff's
            augmentation: the decoder tolerates the prior's sampling error).
        position_dim: Size of the chunk-position condition of the prior (and of the
            positional tokenizer's position embedding).
        positional: Build a `paramgen.tokenizers.PositionalVAETokenizer` (encoder and
            decoder conditioned on the chunk's position) instead of the VAE.
        position_bias: With ``positional``: add a learned table of ``chunk_size`` values
            per chunk (as many parameters as the model) to the decoded chunks.
        task_positions: With ``positional`` and ``condition="task"``: each task's chunks
            get their own positions (`paramgen.chunkwise.ChunkwiseGenerator`'s
            ``position_tasks``), so the tokenizer (and its bias table, one row per task and
            chunk: each task's mean chunk) knows which task's model a chunk belongs to.
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
        base: A pinned base checkpoint (a `paramgen.base.PinnedBase`, a safetensors path,
            a state dict or a module): the generator learns deltas over it and samples
            ``base + D``. ``None``: a `paramgen.chunks.ChunkDataset` source's own base, if any.

    Returns:
        An unfitted `paramgen.chunkwise.ChunkwiseGenerator`; fit it with
        ``gen.fit(ChunkDataset(gen.layout, files), config=fit_config())``.

    Raises:
        TypeError: An unknown option (the message lists the valid ones), a source of the
            wrong kind, or a ``tokenizer`` that is not one.
        ValueError: ``condition="task"`` without task names, a ``chunk_size`` other than
            a layout source's, a ``tokenizer`` of another width, an option out of range, a
            ``compression`` that gives no whole latent length, ``compression`` with
            ``latent_length``, ``position_bias`` without ``positional``, or tokenizer
            options (``compression``, ``positional``, ``position_bias``) with ``tokenizer=``.
    """
    from paramgen.chunks import ChunkDataset
    from paramgen.chunkwise import ChunkwiseGenerator
    from paramgen.priors import DiffusionPrior
    from paramgen.tokenizers import PositionalVAETokenizer, VAETokenizer

    layout = _layout(source, chunk_size, include)
    if base is None and isinstance(source, ChunkDataset):
        base = source.base  # the dataset's deltas are over it: fit requires the same base
    if position_bias and not positional:
        raise ValueError("chunkwise: position_bias=True is an option of the positional tokenizer: pass positional=True too")
    if task_positions and not (positional and condition == "task"):
        raise ValueError("chunkwise: task_positions=True gives a positional tokenizer positions per (task, chunk): pass positional=True and condition='task'")
    if tokenizer is not None:
        given = [k for k, v in (("compression", compression is not None), ("positional", positional), ("position_bias", position_bias)) if v]
        if given:
            raise ValueError(f"chunkwise: {', '.join(given)} build the tokenizer; a tokenizer= passed in is used as it is: drop {given[0]}=")
    if compression is not None:
        if latent_length is not None:
            raise ValueError("chunkwise: pass latent_length= or compression= (which sets the latent length), not both")
        latent_length = latent_length_for(layout.chunk_size, latent_channels, compression)
    elif latent_length is None:
        latent_length = DEFAULT_LATENT_LENGTH
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
    vae: dict[str, Any] = dict(
        latent_channels=latent_channels, latent_length=latent_length, hidden_channels=hidden_channels, num_down=num_down,
        kl_weight=kl_weight, input_noise=input_noise, latent_noise=latent_noise,
    )  # fmt: skip
    with local_seed(seed):
        if tokenizer is not None:
            tok = tokenizer
        elif positional:
            positions = layout.num_chunks * (len(names) if task_positions else 1)
            tok = PositionalVAETokenizer(width=layout.chunk_size, num_chunks=positions, position_dim=position_dim, position_bias=position_bias, **vae)
        else:
            tok = VAETokenizer(rows=1, width=layout.chunk_size, **vae)
        prior = DiffusionPrior(
            shape=tok.latent_shape, cond_dim=position_dim + task_dim, timesteps=timesteps, base_channels=base_channels,
            channel_mults=tuple(channel_mults), ema_decay=ema_decay,
        )  # fmt: skip
        if condition == "task":
            from paramgen.conditioners import IndexConditioner

            task = IndexConditioner(names, dim=cond_dim)
        gen = ChunkwiseGenerator.build(
            layout, tokenizer=tok, prior=prior, task_conditioner=task, position_dim=position_dim, model_config=model_config,
            adapter_config=adapter_config, base=base, position_tasks=names if task_positions else None,
        )  # fmt: skip
    _log_capacity(tok, layout)
    return gen


def _log_capacity(tok: Any, layout: Any) -> None:
    """Log the tokenizer's compression (values per latent value), the capacity knob."""
    compression = getattr(tok, "compression", None)
    if compression is None:
        logger.info("chunkwise: %s of latent shape %s for chunks of %d values", type(tok).__name__, tuple(tok.latent_shape), layout.chunk_size)
        return
    logger.info(
        "chunkwise: %s compresses chunks of %d values into latents %s: %.4g values per latent value%s",
        type(tok).__name__, layout.chunk_size, tuple(tok.latent_shape), compression,
        f", positions of {layout.num_chunks} chunks" if getattr(tok, "positional", False) else "",
    )  # fmt: skip


#: ``fit_config(**overrides)``: `FIT_DEFAULTS` as a `paramgen.training.FitConfig`.
fit_config = fit_config_for(FIT_DEFAULTS, "The chunk-wise D2NWG", __name__)
