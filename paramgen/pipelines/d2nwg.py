"""D2NWG (Soro et al., 2025): a weight VAE and a conditional latent DDPM, wired from a spec or a zoo.

`d2nwg` composes `paramgen.tokenizers.VAETokenizer` (model-wise rows of vectorized,
per-layer z-scored weights to ``(latent_channels, latent_length)`` latents),
`paramgen.priors.DiffusionPrior` (a 1D UNet over the latents) and a conditioner (task
names, image sets of a dataset, or one you bring). Everything that follows from another
part is inferred: the VAE's ``rows``/``width`` from the spec, the prior's ``shape`` from the
VAE's ``latent_shape``, its ``cond_dim`` from the conditioner's ``dim``.

`fit_config` holds the training defaults the harnesses (``benchmarks.modelzoo``,
``zeroshot``, ``retrieval``) use.

Examples:
    >>> import torch
    >>> from paramgen.pipelines import d2nwg
    >>> sd = {"w": torch.zeros(4, 3), "b": torch.zeros(4)}
    >>> gen = d2nwg([sd], tasks=["a", "b"], latent_length=8, hidden_channels=16, base_channels=16)
    >>> gen.prior.shape, gen.prior.cond_dim
    ((4, 8), 64)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

from paramgen.generator import Generator
from paramgen.normalize import Normalizer
from paramgen.pipelines._common import Source, check_tokenizer, conditioner_dim, fit_config_for, local_seed, normalizer_of, read_family, strict_options, task_names

__all__ = ["FIT_DEFAULTS", "d2nwg", "fit_config"]

#: Training defaults of ``benchmarks.modelzoo``'s default size where they differ from
#: `paramgen.training.FitConfig`'s: 4000 VAE steps, 8000 prior steps, prior learning rate
#: 1e-3 (the paper's 1e-4 trains too slowly at these step counts); batches of 64 and VAE
#: learning rate 1e-3 are FitConfig's. The harnesses with a dataset conditioner add
#: ``align_steps=1000`` (D2NWG's contrastive alignment, Alg. 2).
FIT_DEFAULTS: dict[str, Any] = dict(tokenizer_steps=4000, prior_steps=8000, prior_lr=1e-3)


@strict_options
def d2nwg(
    source: Source,
    *,
    condition: Literal["task", "dataset"] | Any | None = "task",
    tasks: Sequence[str] | None = None,
    seed: int | None = 0,
    chunk_size: int | None = None,
    layerwise: bool = False,
    latent_channels: int = 4,
    latent_length: int = 32,
    hidden_channels: int = 64,
    num_down: int = 2,
    kl_weight: float = 1e-6,
    input_noise: float = 1e-3,
    latent_noise: float = 1e-1,
    cond_dim: int = 64,
    feature_dim: int | None = None,
    timesteps: int = 1000,
    base_channels: int = 64,
    channel_mults: Sequence[int] = (1, 2),
    ema_decay: float = 0.995,
    cond_dropout: float = 0.0,
    guidance_scale: float = 1.0,
    sampler: Literal["ddpm", "ddim"] = "ddim",
    ddim_steps: int | None = None,
    normalizer: str | Normalizer | None = "per-layer",
    tokenizer: Any = None,
) -> Generator:
    """A D2NWG generator (VAE + latent DDPM) for the architecture of ``source``, or a family.

    The defaults are those the D2NWG harnesses share (``benchmarks.modelzoo``,
    ``zeroshot``, ``retrieval``; the paper's values where it gives them, docs/latent-diffusion.md):

    ==================  ============  ==========================================================
    option              default       source
    ==================  ============  ==========================================================
    latent_channels     4             harnesses; paper: a small latent per model
    latent_length       32            harnesses (``benchmarks.fewshot`` and the demo use 16)
    hidden_channels     64            harnesses' default size (quick: 32)
    num_down            2             `VAETokenizer`'s default
    kl_weight           1e-6          paper (beta-VAE, KL weight about 1e-6)
    input_noise         1e-3          harnesses (Cond P-Diff's noise augmentation)
    latent_noise        1e-1          harnesses (the demo uses no noise)
    cond_dim            64            harnesses (``ImageSetConditioner(dim=64)``)
    timesteps           1000          paper (linear beta schedule, T about 1000)
    base_channels       64            harnesses
    channel_mults       (1, 2)        harnesses
    ema_decay           0.995         harnesses
    normalizer          "per-layer"   harnesses (`paramgen.PerLayerZScore`)
    ==================  ============  ==========================================================

    Components are built under ``seed`` in the order tokenizer, conditioner
    (``"dataset"`` or one built by a callable ``condition``), prior, and last the task
    embedding of ``condition="task"`` (its place in earlier versions, kept so that a seed
    gives the same generator as before). A ``tokenizer`` passed in is reused (e.g. a fitted
    VAE shared by ablations, fitted on with ``tokenizer_steps=0``); the VAE options are then
    ignored and nothing is drawn for it.

    Args:
        source: A `paramgen.ParamSpec`, a `paramgen.zoo.Zoo` (its spec, or a family keyed
            by spec id when it holds several architectures; its tasks for
            ``condition="task"``), a mapping of architecture keys to specs (a family: one
            generator for all, `paramgen.FamilyVectorizer`, fitted with ``archs=`` naming
            each model's key), or a sequence of state dicts (the spec of the first).
        condition: ``"task"``: an `paramgen.conditioners.IndexConditioner` of ``cond_dim``
            over ``tasks`` (raw conditions are task names); ``"dataset"``: D2NWG's
            `paramgen.conditioners.ImageSetConditioner` of ``cond_dim`` over image features
            of ``feature_dim`` grouped by class; ``None``: unconditional; a callable
            that takes no argument and returns a conditioner (e.g. a
            ``functools.partial`` of a conditioner class: built under ``seed`` after the
            tokenizer); or a ready
            conditioner (its ``dim`` sets the prior's condition size).
        tasks: Task names for ``condition="task"`` (default: the zoo's).
        seed: Seeds the components' initialization on a local random state: the global
            one is neither read nor changed. ``None`` draws from the global generator
            (a script that owns its process).
        chunk_size: ``None``: one row per model (`paramgen.ModelVectorizer`; for a
            family, each member zero-padded to the largest); an int: rows of that many
            weights (`paramgen.ChunkVectorizer`).
        layerwise: With ``chunk_size``: cut each tensor on its own
            (`paramgen.LayerVectorizer`) instead of the whole flattened model.
        latent_channels: VAE latent channels.
        latent_length: VAE latent length.
        hidden_channels: VAE trunk width.
        num_down: VAE stride-2 downsamplings.
        kl_weight: VAE KL weight.
        input_noise: Std of Gaussian noise on the VAE's input while training.
        latent_noise: Std of Gaussian noise on the latent while training.
        cond_dim: Size of the condition vector of ``"task"`` and ``"dataset"``.
        feature_dim: Image feature size of ``condition="dataset"`` (required there).
        timesteps: Diffusion steps.
        base_channels: UNet width at its first level.
        channel_mults: UNet width multipliers per level.
        ema_decay: EMA decay of the prior's sampling weights.
        cond_dropout: Classifier-free guidance: the fraction of conditions dropped while
            training (0: no guidance).
        guidance_scale: Default guidance weight at sampling (needs ``cond_dropout > 0``
            unless 1).
        sampler: Default sampler, ``"ddim"`` (``DEFAULT_DDIM_STEPS`` = 50 steps) or ``"ddpm"``.
        ddim_steps: Default DDIM steps (``None``: 50, or ``timesteps`` when shorter).
        normalizer: ``"per-layer"`` (`paramgen.PerLayerZScore`), ``"per-task"``
            (`paramgen.PerTaskZScore` with a global fallback), ``"global"``, a ready
            normalizer, or ``None``. A family needs one scale for all members
            (``"global"`` or a ready one, e.g. ``GlobalScale(fan_in=True)``).
        tokenizer: A ready (e.g. fitted) tokenizer over this layout's rows, or ``None``
            to build the VAE.

    Returns:
        An unfitted `paramgen.Generator`; fit it with ``paramgen.training.fit(gen, ...,
        config=fit_config())`` or ``paramgen.fit(gen, ...)``.

    Raises:
        TypeError: An unknown option (the message lists the valid ones), a source of
            the wrong kind, or a ``tokenizer`` that is not one.
        ValueError: ``condition="task"`` without task names, ``"dataset"`` without
            ``feature_dim``, ``normalizer="per-layer"`` for a family, a ``tokenizer``
            whose rows do not match the layout, or an option out of range.

    Examples:
        >>> import torch
        >>> spec = __import__("paramgen").ParamSpec.from_state_dict({"w": torch.zeros(8, 4)})
        >>> gen = d2nwg(spec, condition=None, latent_length=8, hidden_channels=16, base_channels=16)
        >>> gen.tokenizer.latent_shape, gen.conditioner is None
        ((4, 8), True)
    """
    from paramgen.priors import DiffusionPrior
    from paramgen.tokenizers import VAETokenizer
    from paramgen.vectorize import ChunkVectorizer, FamilyVectorizer, LayerVectorizer, ModelVectorizer

    family, spec, zoo_tasks = read_family(source)
    vectorizer: Any
    if family is not None:
        vectorizer = FamilyVectorizer.modelwise(family) if chunk_size is None else FamilyVectorizer.chunked(family, chunk_size=chunk_size, layerwise=layerwise)
    else:
        assert spec is not None  # read_family gives a family or a spec
        if chunk_size is None:
            vectorizer = ModelVectorizer(spec)
        else:
            vectorizer = LayerVectorizer(spec, chunk_size=chunk_size) if layerwise else ChunkVectorizer(spec, chunk_size=chunk_size)
    build_conditioner = None
    if condition == "task":
        names = task_names(tasks, zoo_tasks, "d2nwg")
    elif condition == "dataset":
        if feature_dim is None:
            raise ValueError("d2nwg(condition='dataset') needs feature_dim, the size of the image features")
        from paramgen.conditioners import ImageSetConditioner

        build_conditioner = functools.partial(ImageSetConditioner, feature_dim=feature_dim, dim=cond_dim)
    elif isinstance(condition, str):
        raise ValueError(f"d2nwg: condition must be 'task', 'dataset', None or a Conditioner, got {condition!r}")
    elif condition is not None and callable(condition) and (isinstance(condition, type) or not isinstance(getattr(condition, "dim", None), int)):
        build_conditioner = condition  # a factory (a ready conditioner has an int .dim)
    elif condition is not None:
        conditioner_dim(condition, "d2nwg")
    if tokenizer is not None:
        check_tokenizer(tokenizer, vectorizer.rows, vectorizer.width, "d2nwg", f"chunk_size={chunk_size}")
    with local_seed(seed):
        tok = tokenizer if tokenizer is not None else VAETokenizer(
            rows=vectorizer.rows, width=vectorizer.width, latent_channels=latent_channels, latent_length=latent_length,
            hidden_channels=hidden_channels, num_down=num_down, kl_weight=kl_weight, input_noise=input_noise, latent_noise=latent_noise,
        )  # fmt: skip
        conditioner: Any = None if condition == "task" else condition
        if build_conditioner is not None:
            conditioner = build_conditioner()
        prior_cond = cond_dim if condition == "task" else 0 if conditioner is None else conditioner_dim(conditioner, "d2nwg")
        prior = DiffusionPrior(
            shape=tok.latent_shape, cond_dim=prior_cond, timesteps=timesteps, base_channels=base_channels, channel_mults=tuple(channel_mults),
            ema_decay=ema_decay, cond_dropout=cond_dropout, guidance_scale=guidance_scale, sampler=sampler, ddim_steps=ddim_steps,
        )  # fmt: skip
        if condition == "task":
            from paramgen.conditioners import IndexConditioner

            conditioner = IndexConditioner(names, dim=cond_dim)
        norm = normalizer_of(normalizer, spec, "d2nwg")
    return Generator(vectorizer=vectorizer, tokenizer=tok, prior=prior, conditioner=conditioner, normalizer=norm)


#: ``fit_config(**overrides)``: `FIT_DEFAULTS` as a `paramgen.training.FitConfig`.
fit_config = fit_config_for(FIT_DEFAULTS, "D2NWG", __name__)
