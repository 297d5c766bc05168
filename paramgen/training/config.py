"""`FitConfig`: everything `paramgen.training.fit` needs besides the data, and its errors."""

from __future__ import annotations

import math
from typing import Any, Literal

import attrs

__all__ = ["FitConfig", "NonFiniteLossError", "CheckpointError", "STAGES"]

STAGES = ("normalizer", "tokenizer", "latents", "align", "prior")


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or Inf; the message names the stage and step."""


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing, damaged or from another run."""


def _positive(_: Any, attribute: attrs.Attribute, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"FitConfig.{attribute.name} must be a positive integer, got {value!r}")


def _non_negative(_: Any, attribute: attrs.Attribute, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"FitConfig.{attribute.name} must be an integer >= 0, got {value!r}")


def _positive_float(_: Any, attribute: attrs.Attribute, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"FitConfig.{attribute.name} must be a finite number > 0, got {value!r}")


def _unit(_: Any, attribute: attrs.Attribute, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"FitConfig.{attribute.name} must lie in [0, 1), got {value!r}")


def _non_negative_float(_: Any, attribute: attrs.Attribute, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"FitConfig.{attribute.name} must be a finite number >= 0, got {value!r}")


def _optional_positive_float(_: Any, attribute: attrs.Attribute, value: float | None) -> None:
    if value is not None:
        _positive_float(_, attribute, value)


def _optional_positive(_: Any, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None:
        _positive(_, attribute, value)


@attrs.frozen(kw_only=True)
class FitConfig:
    """Everything `fit` needs besides the data; frozen, JSON-serializable (``attrs.asdict``).

    The defaults reproduce the first release's training (constant learning rate, no
    clipping, no engine EMA), so published numbers keep their meaning; D2NWG-style runs
    set ``schedule="cosine"``, ``warmup_steps`` and ``max_grad_norm``.

    Attributes:
        tokenizer_steps: Optimizer steps of the tokenizer stage.
        align_steps: Steps of the contrastive alignment stage (0 skips it).
        align_restarts: Runs of the alignment stage, each from another seeded
            initialization of the conditioner's trainable weights (the first from the
            conditioner as given), keeping the one with the lowest final training loss
            (the mean loss of its last ``max(1, align_steps // 10)`` steps); every
            restart's final loss is logged. 1 (the default): one run, as before.
        prior_steps: Optimizer steps of the prior stage.
        batch_size: Models per optimizer step (the global batch, over all processes and
            accumulation steps; capped at the zoo size).
        tokenizer_lr: Peak AdamW learning rate of the tokenizer.
        prior_lr: Peak AdamW learning rate of the prior (and a trainable conditioner).
        align_lr: Adam learning rate of the alignment stage.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        schedule: ``"constant"`` or ``"cosine"`` decay after the warmup.
        warmup_steps: Linear warmup steps of each gradient stage.
        min_lr_ratio: Final learning rate of the cosine schedule, relative to the peak.
        max_grad_norm: Clip the global gradient norm to this (``None``: no clipping).
        ema_decay: EMA of a stage's weights, copied into them at the end of the stage
            (0: off). Components with their own ``update_ema`` keep their EMA instead.
        precision: ``"fp32"``, or autocast in ``"bf16"`` / ``"fp16"`` (fp16 with a
            gradient scaler).
        grad_accum: Micro-batches per optimizer step (per process).
        seed: All randomness of fitting.
        log_every: Steps between logged (and NaN-checked) losses: to the ``tracker`` and
            as INFO records of the ``paramgen.training`` logger (stage, step, loss).
        checkpoint_every: Steps between checkpoints (``None``: only with
            ``checkpoint_dir`` set, at the end of each stage).
        checkpoint_dir: Folder for checkpoints (``None``: none are written).
        encode_batch_size: Models per batch when encoding the whole zoo.
        num_workers: DataLoader workers that read training batches.
        behaviour_weight: Weight of the behavioural loss in the tokenizer stage: the loss is
            ``tokenizer loss + behaviour_weight * behaviour(decoded, batch)`` with the
            ``behaviour`` callable given to `paramgen.training.fit` (e.g.
            `paramgen.behaviour.ChunkBehaviour`); 0 (the default): no behavioural loss.
        behaviour_every: Tokenizer steps between behavioural losses (1: every step): the
            behaviour usually runs a whole model, so it may be sparser than the steps.
        progress: Show tqdm progress bars.
    """

    tokenizer_steps: int = attrs.field(default=2000, validator=_non_negative)
    align_steps: int = attrs.field(default=0, validator=_non_negative)
    align_restarts: int = attrs.field(default=1, validator=_positive)
    prior_steps: int = attrs.field(default=5000, validator=_non_negative)
    batch_size: int = attrs.field(default=64, validator=_positive)
    tokenizer_lr: float = attrs.field(default=1e-3, validator=_positive_float)
    prior_lr: float = attrs.field(default=1e-4, validator=_positive_float)
    align_lr: float = attrs.field(default=1e-3, validator=_positive_float)
    weight_decay: float = attrs.field(default=0.0)
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.999), converter=tuple)
    schedule: Literal["constant", "cosine"] = attrs.field(default="constant", validator=attrs.validators.in_(("constant", "cosine")))
    warmup_steps: int = attrs.field(default=0, validator=_non_negative)
    min_lr_ratio: float = attrs.field(default=0.0, validator=_unit)
    max_grad_norm: float | None = attrs.field(default=None, validator=_optional_positive_float)
    ema_decay: float = attrs.field(default=0.0, validator=_unit)
    precision: Literal["fp32", "bf16", "fp16"] = attrs.field(default="fp32", validator=attrs.validators.in_(("fp32", "bf16", "fp16")))
    grad_accum: int = attrs.field(default=1, validator=_positive)
    seed: int = attrs.field(default=0, validator=_non_negative)
    log_every: int = attrs.field(default=100, validator=_positive)
    checkpoint_every: int | None = attrs.field(default=None, validator=_optional_positive)
    checkpoint_dir: str | None = attrs.field(default=None, converter=attrs.converters.optional(str))
    encode_batch_size: int = attrs.field(default=256, validator=_positive)
    num_workers: int = attrs.field(default=0, validator=_non_negative)
    behaviour_weight: float = attrs.field(default=0.0, validator=_non_negative_float)
    behaviour_every: int = attrs.field(default=1, validator=_positive)
    progress: bool = True

    def __attrs_post_init__(self) -> None:
        wd = self.weight_decay
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or wd < 0 or not math.isfinite(wd):
            raise ValueError(f"FitConfig.weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"FitConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.checkpoint_every is not None and self.checkpoint_dir is None:
            raise ValueError("FitConfig.checkpoint_every needs checkpoint_dir (where to write the checkpoints)")

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["betas"] = list(self.betas)
        return d

