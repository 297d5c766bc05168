"""Fitting a `paramgen.Generator`: the training engine, kept apart from the pipeline.

``fit(generator, data, conds, config=FitConfig(...))`` runs D2NWG's stages in order, one
short function each:

1. ``normalizer``: statistics of the flat weights (closed form);
2. ``tokenizer``: the VAE / VQ-VAE learns the rows (skipped when it has no weights);
3. ``latents``: every model is encoded once and the latents are standardized to unit
   scale (a saved `paramgen.interfaces.LatentStats`; diffusion on badly scaled latents
   collapses);
4. ``align``: optional contrastive alignment of the conditioner with the latents (D2NWG
   Alg. 2, `paramgen.conditioners.align`);
5. ``prior``: the prior learns the latents (or tokens) given the conditions; a prior with
   ``fit`` (the KDE baseline) is fitted in closed form.

The gradient stages share one loop: AdamW with linear warmup and cosine (or constant)
decay, gradient clipping, an EMA of the weights (a component with its own ``update_ema``,
like `paramgen.priors.DiffusionPrior`, keeps it itself), autocast in bf16 or fp16 (with a
gradient scaler), gradient accumulation, tracker logging, and a check for NaN/Inf losses
that names the stage and step. The loop adds no per-step host synchronization: losses are
read back only when they are logged or checkpointed.

Randomness is a function of ``(config.seed, stage, step, micro-batch)``: the models of each
micro-batch and the noise the losses draw come from generators seeded by that tuple. So a
run resumed from a checkpoint continues exactly where it stopped, and a data-parallel run
whose processes take the micro-batches of a global batch computes the same losses as one
process that accumulates them.

Checkpoints (``config.checkpoint_every`` steps, into ``config.checkpoint_dir``) hold every
component's weights, the optimizer, scheduler, EMA, gradient-scaler and global RNG states
and the position, as safetensors + JSON, written to a new folder that replaces the last
one only when complete. ``fit(..., resume=DIR)`` continues from the newest one.

Data-parallel fitting runs under an existing launcher: ``torchrun --nproc_per_node N
script.py`` or ``accelerate launch script.py``; `fit` then uses an ``accelerate.Accelerator``
to join the process group and wrap each stage in ``DistributedDataParallel``.

Examples:
    >>> import torch
    >>> from paramgen import Generator, ModelVectorizer, ParamSpec
    >>> from paramgen.tokenizers import VAETokenizer
    >>> from paramgen.priors import DiffusionPrior
    >>> spec = ParamSpec.from_module(torch.nn.Linear(4, 2))
    >>> tok = VAETokenizer(rows=1, width=10, latent_channels=2, latent_length=4, hidden_channels=8, num_down=1)
    >>> gen = Generator(vectorizer=ModelVectorizer(spec), tokenizer=tok,
    ...                 prior=DiffusionPrior(shape=tok.latent_shape, base_channels=8, channel_mults=(1,), timesteps=50))
    >>> config = FitConfig(tokenizer_steps=5, prior_steps=5, batch_size=8, schedule="cosine", warmup_steps=2, progress=False)
    >>> gen = fit(gen, torch.randn(16, 10), config=config)
    >>> gen.fitted, gen.latent_stats.scale > 0
    (True, True)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from paramgen.generator import Generator
from paramgen.tracking import Logger
from paramgen.training.checkpoint import LATEST, Saved, latest_checkpoint, write_checkpoint
from paramgen.training.config import STAGES, CheckpointError, FitConfig, NonFiniteLossError
from paramgen.training.engine import Run, modules_of, trainable_parameters
from paramgen.training.inputs import adapt_inputs, check_zoo, run_fingerprint
from paramgen.training.stages import Behaviour, align_stage, latents_stage, prior_stage, tokenizer_stage

__all__ = ["Behaviour", "FitConfig", "fit", "NonFiniteLossError", "CheckpointError", "STAGES", "latest_checkpoint"]

logger = logging.getLogger(__name__)


def fit(
    generator: Generator,
    flat: Any,
    conds: Sequence[Any] | None = None,
    *,
    config: FitConfig | None = None,
    tasks: Sequence[str] | None = None,
    archs: Sequence[str] | None = None,
    predictor: nn.Module | None = None,
    behaviour: Behaviour | None = None,
    tracker: Logger | None = None,
    resume: str | os.PathLike | None = None,
    accelerator: Any = None,
) -> Generator:
    """Fit every stage of ``generator`` on a zoo, on the generator's device.

    Args:
        generator: The pipeline to fit (moved to a device beforehand with
            `paramgen.Generator.to`, or by the accelerator).
        flat: The zoo. A `paramgen.zoo.Zoo` view (all its checkpoints; its tasks are the
            ``tasks`` when those are not given, and the ``conds`` too when the conditioner is
            an `paramgen.conditioners.IndexConditioner` over task names; a family generator takes each
            checkpoint's architecture from its spec), a `paramgen.zoo.WeightDataset`
            built with the generator's vectorizer and ``normalizer=None`` (read lazily when
            the generator has no normalizer), or a sequence of state dicts (each checked
            against the spec; the first mismatching tensor is named). Or ``(M, D)`` weight vectors in spec order (e.g. ``Zoo.flatten()[0]``), kept
            on the CPU: batches move to the device one at a time. For a family, a
            sequence of ``M`` flat vectors of their own architectures. Or a map-style
            ``torch.utils.data.Dataset`` read lazily, whose items are dicts with ``"x"``
            (the ``(N, C)`` rows of one model as the tokenizer sees them: vectorized and
            normalized), and optionally ``"mask"`` (``(N, C)`` bool), ``"cond"`` (its raw
            condition) and ``"task"``; the normalizer stage is then the dataset's business
            (build the generator with ``normalizer=None``).
        conds: One raw condition per model, for the conditioner.
        config: Steps, optimizer, schedule, precision, checkpoints.
        tasks: Task name per model (a per-task normalizer; contrastive groups).
        archs: For a family: the architecture key of each model.
        predictor: Frozen accuracy predictor for the predictor-guided VAE loss.
        behaviour: A behavioural loss for the tokenizer stage, ``behaviour(decoded,
            batch) -> scalar tensor``: ``decoded`` is the tokenizer's reconstruction of
            ``batch["x"]`` in its normalized scale, ``(B, N * C)`` (a chunk-wise generator's
            chunks: ``(B, chunk_size)``), differentiable; ``batch`` is the training batch
            (``"x"``, ``"mask"``, ``"cond"``, and the dataset's other entries). The stage
            minimizes ``tokenizer loss + config.behaviour_weight * behaviour(...)`` every
            ``config.behaviour_every`` steps (e.g. decoded weights must reproduce a model's
            outputs: `paramgen.behaviour.ChunkBehaviour`). Needs ``behaviour_weight > 0``.
        tracker: Receives losses every ``config.log_every`` steps (process 0 only); the
            same values go to the ``paramgen.training`` logger at INFO.
        resume: A checkpoint folder of an interrupted run with the same data and config,
            or the ``checkpoint_dir`` holding it; the run continues from it.
        accelerator: An ``accelerate.Accelerator`` for data-parallel fitting; created
            automatically when the process was started by ``torchrun`` or
            ``accelerate launch`` with more than one process.

    Returns:
        The fitted ``generator`` (in eval mode).

    ``config.prior_steps=0`` skips the prior stage: a generator whose prior learns by
    gradient steps is then not marked fitted (unless it was before), so it cannot sample
    from an untrained prior. ``tokenizer_steps=0`` keeps the tokenizer as it is (to reuse
    a fitted one).

    Raises:
        NonFiniteLossError: A loss became NaN or Inf (the message names stage and step;
            the behavioural loss is part of the tokenizer's).
        CheckpointError: ``resume`` is not a checkpoint of this run.
        ValueError: An empty zoo; conditions, tasks or architectures that do not match it;
            ``behaviour_weight > 0`` without ``behaviour``, or ``behaviour`` that would be
            ignored (``behaviour_weight=0``, no tokenizer steps or no trainable tokenizer).
        TypeError: ``behaviour`` is not callable, or returns no scalar tensor.
        paramgen.spec.SpecMismatchError: Weights of another architecture.
    """
    config = config or FitConfig()
    if not isinstance(config, FitConfig):
        raise TypeError(f"config must be a FitConfig, got {type(config).__name__}")
    _check_behaviour(generator, config, behaviour)
    generator.check_fittable()
    flat, conds, tasks, archs = adapt_inputs(generator, flat, conds, tasks, archs)
    zoo = check_zoo(generator, flat, conds, tasks, archs)
    run = Run(generator, config, tracker, accelerator)
    fingerprint = run_fingerprint(generator, zoo, config)
    saved: Saved | None = None
    if resume is not None:
        path = Path(resume)
        if (path / LATEST).exists():
            path = latest_checkpoint(path) or path
        saved = Saved(path)
        if saved.meta["fit"] != fingerprint:
            diff = sorted(k for k in fingerprint if saved.meta["fit"].get(k) != fingerprint[k])
            raise CheckpointError(f"{path} is a checkpoint of another run (it differs in {', '.join(diff)}); resume with the same data, components and config")
        saved.restore_generator(generator)
        logger.info("resuming from %s (stage %s, step %d)", path, saved.stage, saved.step)
    at = STAGES.index(saved.stage) if saved is not None else 0
    step_in = saved.step if saved is not None else 0

    def saver(stage: str) -> Callable[..., None]:
        def save(step: int, loop: dict[str, Any] | None = None) -> None:
            if config.checkpoint_dir is not None:
                write_checkpoint(run, generator, fingerprint, stage, step, loop)

        return save

    def resumed(stage: str) -> tuple[int, Saved | None]:
        """Where a stage starts: mid-stage only in the stage the checkpoint stopped in."""
        if saved is not None and STAGES[at] == stage and not saved.done:
            return step_in, saved
        return 0, None

    def finished(stage: str) -> bool:
        return saved is not None and (STAGES.index(stage) < at or (STAGES.index(stage) == at and saved.done))

    # The stages. Deterministic ones (normalizer statistics, encoding) are recomputed on
    # resume; an interrupted alignment starts over from the tokenizer-end checkpoint.
    rows = zoo.rows(generator)
    if not finished("tokenizer"):
        start, state = resumed("tokenizer")
        tokenizer_stage(run, generator, rows, predictor, start, state, saver("tokenizer"), behaviour)
        saver("tokenizer")(config.tokenizer_steps)
    enc = latents_stage(run, generator, rows, want_latents=config.align_steps > 0)
    if zoo.lazy:
        if generator.conditioner is not None and (enc.conds is None or any(c is None for c in enc.conds)):
            raise ValueError("this generator is conditioned: every dataset item needs a 'cond'")
        if generator.conditioner is None and enc.conds is not None:
            raise ValueError("this generator is unconditional, but the dataset items carry a 'cond'")
    if not finished("align") and config.align_steps > 0:
        align_stage(run, generator, enc)
        saver("align")(config.align_steps)
    if not finished("prior"):
        start, state = resumed("prior")
        prior_stage(run, generator, enc, start, state, saver("prior"))
    for part in modules_of(generator.tokenizer, generator.prior, generator.conditioner):
        part.eval()
    # prior_steps=0 skips the stage: a prior that learns by gradient steps is then not
    # fitted by this run, and the generator is marked fitted only if it already was.
    trained = hasattr(generator.prior, "fit") or not trainable_parameters(generator.prior) or config.prior_steps > 0
    if not trained and not generator.fitted:
        logger.warning("fit: prior_steps=0 left the %s untrained; the generator is not marked fitted", type(generator.prior).__name__)
    generator.fitted = generator.fitted or trained
    return generator


def _check_behaviour(generator: Generator, config: FitConfig, behaviour: Behaviour | None) -> None:
    """Refuse a behavioural loss that would be ignored, and a weight without one."""
    if behaviour is None:
        if config.behaviour_weight > 0:
            raise ValueError(
                f"FitConfig.behaviour_weight={config.behaviour_weight} needs behaviour=: a callable (decoded, batch) -> scalar loss "
                "(e.g. paramgen.behaviour.ChunkBehaviour)"
            )
        return
    if not callable(behaviour):
        raise TypeError(f"behaviour must be a callable (decoded, batch) -> scalar loss, got {type(behaviour).__name__}")
    if config.behaviour_weight == 0:
        raise ValueError("fit got behaviour=, but FitConfig.behaviour_weight=0 would ignore it: set behaviour_weight > 0")
    if config.tokenizer_steps == 0 or not trainable_parameters(generator.tokenizer):
        why = "tokenizer_steps=0" if config.tokenizer_steps == 0 else f"the {type(generator.tokenizer).__name__} has no trainable weights"
        raise ValueError(f"fit got behaviour=, a loss of the tokenizer stage, but {why}: the stage does not run")
