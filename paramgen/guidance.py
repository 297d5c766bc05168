"""Guidance at sampling time from the conditioning data: a loss on the decoded weights steers DDIM.

A generator conditioned on data (a support set) can use that same data while it samples:
at each DDIM step the prior predicts the clean latents ``x0``; the generator decodes them
into weights (latent statistics, tokenizer decoder, the normalizer's inverse, the anchor
and the pinned base when it has them), scores the weights with a loss on data that the
condition already holds, and the step moves ``x0`` along the negative gradient of that
loss before going on (``x0 <- x0 - scale * grad``, the gradient per sample optionally
clipped to ``max_grad_norm``). The gradient flows through the decoder only, not through
the denoiser: the x0-space update of manifold-preserving guided diffusion (He et al. 2023,
MPGD), which costs one decoder backward pass per step. Nothing else is read: no query or
test data, and no randomness (with ``eta = 0`` the guided chain starts from the same noise
as the unguided one, so the two are paired sample by sample).

Two levels:

- `Guidance` (what a user passes to `paramgen.Generator.sample_flat` / ``sample`` as
  ``guidance=``): a `WeightsLoss` ``loss(weights, conds) -> (B,)``, a ``scale`` and an
  optional ``max_grad_norm``. `SupportCrossEntropy` is the ready-made loss for few-shot
  linear heads: the cross-entropy of each head on its support set's features, the labels
  being the classes' order in the support set.
- `LatentGuidance` (what the generator passes to `paramgen.priors.DiffusionPrior.sample`):
  the same with a loss on the prior's latents; `guide_eps` applies it inside the DDIM loop.

``scale`` is not the prior's ``guidance_scale`` (classifier-free guidance); the two can be
combined. With ``scale = 0`` the samples equal unguided samples bit for bit.

Examples:
    >>> import torch
    >>> loss = SupportCrossEntropy()
    >>> heads = {"weight": torch.zeros(2, 3, 4, requires_grad=True), "bias": torch.zeros(2, 3)}
    >>> support = [torch.randn(3, 1, 4), torch.randn(3, 1, 4)]   # (K, S, F) per head
    >>> ce = loss(heads, support)                                   # (B,): log(3) for zero heads
    >>> ce.shape, round(float(ce[0]), 4)
    (torch.Size([2]), 1.0986)
    >>> Guidance(loss, scale=2.0, max_grad_norm=1.0).scale
    2.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import attrs
import torch

from paramgen.heads import head_cross_entropy

__all__ = ["WeightsLoss", "Guidance", "LatentGuidance", "SupportCrossEntropy", "guide_eps"]


@runtime_checkable
class WeightsLoss(Protocol):
    """A loss on generated weights computed from data their conditions hold.

    Called with ``weights`` (``name -> (B, *shape)``, the spec's stacked tensors, or a
    ``(B, D)`` flat tensor when `Guidance` has ``inputs="flat"``) and ``conds`` (the ``B``
    raw conditions the samples were drawn for, one per sample); returns ``(B,)`` losses,
    one per sample, differentiable with respect to ``weights``.
    """

    def __call__(self, weights: Any, conds: Sequence[Any]) -> torch.Tensor: ...


def _check_scale(_: Any, attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _check_clip(_: Any, __: Any, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0):
        raise ValueError(f"max_grad_norm must be a finite number > 0 or None, got {value!r}")


def _check_callable(_: Any, attribute: Any, value: Any) -> None:
    if not callable(value):
        raise TypeError(f"{attribute.name} must be callable, got {type(value).__name__}")


def _check_inputs(_: Any, __: Any, value: Any) -> None:
    if value not in ("dict", "flat"):
        raise ValueError(f"inputs must be 'dict' or 'flat', got {value!r}")


@attrs.frozen
class Guidance:
    """Loss guidance for `paramgen.Generator.sample_flat` (``guidance=``).

    Attributes:
        loss: A `WeightsLoss`: ``loss(weights, conds) -> (B,)``.
        scale: Step along the negative gradient, in the prior's (standardized) latent
            units per unit of loss gradient; 0 samples exactly as without guidance.
        max_grad_norm: Clip each sample's latent gradient to this L2 norm before scaling;
            ``None`` clips nothing.
        inputs: ``"dict"`` (the spec's tensors, stacked) or ``"flat"`` (``(B, D)``
            vectors in the spec's order) as the loss's ``weights``.

    Raises:
        ValueError: A negative or non-finite scale, a bad ``max_grad_norm`` or ``inputs``.
        TypeError: ``loss`` is not callable.

    Examples:
        >>> Guidance(SupportCrossEntropy(), scale=-1.0)
        Traceback (most recent call last):
        ...
        ValueError: scale must be a finite number >= 0, got -1.0
    """

    loss: WeightsLoss = attrs.field(validator=_check_callable)
    scale: float = attrs.field(default=1.0, validator=_check_scale)
    max_grad_norm: float | None = attrs.field(default=None, validator=_check_clip)
    inputs: Literal["dict", "flat"] = attrs.field(default="dict", validator=_check_inputs)


@attrs.frozen
class LatentGuidance:
    """Loss guidance in the prior's latent space (`paramgen.priors.DiffusionPrior.sample`, ``guidance=``).

    Attributes:
        loss: ``loss(x0) -> (B,)``: predicted clean latents ``(B, C, T)`` (standardized,
            as the prior samples them) to one loss per sample, differentiable in ``x0``.
        scale: Step along the negative gradient; 0 leaves the chain unchanged bit for bit.
        max_grad_norm: Per-sample L2 clip of the gradient; ``None`` clips nothing.

    Examples:
        >>> import torch
        >>> from paramgen.priors import DiffusionPrior
        >>> prior = DiffusionPrior(shape=(1, 5), timesteps=10, base_channels=8, channel_mults=(1,))
        >>> pull = LatentGuidance(lambda x0: (x0 - 3.0).pow(2).flatten(1).sum(1), scale=0.2)
        >>> g = lambda: torch.Generator().manual_seed(0)
        >>> free, guided = prior.sample(4, generator=g()), prior.sample(4, generator=g(), guidance=pull)
        >>> bool((guided - 3).abs().mean() < (free - 3).abs().mean())
        True
    """

    loss: Callable[[torch.Tensor], torch.Tensor] = attrs.field(validator=_check_callable)
    scale: float = attrs.field(default=1.0, validator=_check_scale)
    max_grad_norm: float | None = attrs.field(default=None, validator=_check_clip)


def guide_eps(guidance: LatentGuidance, eps: torch.Tensor, x_t: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """The noise prediction whose implied ``x0`` has moved along the loss's negative gradient.

    ``x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)``; with ``g`` the gradient of
    ``sum(loss(x0))`` in ``x0`` (each sample's own, the samples being independent), clipped
    per sample, ``x0' = x0 - scale g`` is implied by
    ``eps' = eps + sqrt(abar / (1 - abar)) scale g``, which a DDIM step then uses as it
    would ``eps``. Written as a change of ``eps`` so that ``scale = 0`` returns ``eps``
    itself, bit for bit.

    Args:
        guidance: The loss, scale and clip.
        eps: ``(B, ...)`` predicted noise at ``x_t``.
        x_t: ``(B, ...)`` current latents.
        abar: ``abar_t`` broadcastable to ``x_t`` (``(B, 1, ...)``), in ``x_t``'s dtype.

    Returns:
        ``eps'`` shaped, typed and placed like ``eps``.

    Raises:
        ValueError: The loss is not one value per sample.
        FloatingPointError: The loss or its gradient is NaN or Inf.

    Examples:
        >>> import torch
        >>> x, eps, abar = torch.randn(2, 1, 3), torch.randn(2, 1, 3), torch.full((2, 1, 1), 0.5)
        >>> off = LatentGuidance(lambda x0: x0.pow(2).flatten(1).sum(1), scale=0.0)
        >>> torch.equal(guide_eps(off, eps, x, abar), eps)
        True
    """
    b = x_t.shape[0]
    x0 = (x_t - (1.0 - abar).sqrt() * eps) / abar.sqrt()
    with torch.enable_grad():
        x0 = x0.detach().requires_grad_(True)
        loss = guidance.loss(x0)
        if not isinstance(loss, torch.Tensor) or tuple(loss.shape) != (b,):
            got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(f"a guidance loss must return one value per sample, shape ({b},), got {got}")
        if not torch.isfinite(loss).all():
            raise FloatingPointError("the guidance loss is NaN or Inf at a predicted x0; lower the scale or clip the gradient (max_grad_norm)")
        # autograd.grad, not backward: the decoder's parameters get no .grad.
        (grad,) = torch.autograd.grad(loss.sum(), x0)
    if not torch.isfinite(grad).all():
        raise FloatingPointError("the guidance gradient is NaN or Inf; lower the scale or clip the gradient (max_grad_norm)")
    grad = grad.to(eps.dtype)
    if guidance.max_grad_norm is not None:
        norm = grad.flatten(1).norm(dim=1).reshape(b, *([1] * (grad.ndim - 1)))  # (B, 1, ...)
        grad = grad * (guidance.max_grad_norm / norm.clamp_min(guidance.max_grad_norm))
    return eps + (abar / (1.0 - abar)).sqrt() * (guidance.scale * grad)


@attrs.frozen
class SupportCrossEntropy:
    """Cross-entropy of each generated linear head on its own support set (a `WeightsLoss`).

    The condition of each sample is its support set ``(K, S, F)`` with the classes in the
    head's order (`paramgen.conditioners.ordered.OrderedSetConditioner`'s input), so the
    label of image ``s`` of class ``k`` is ``k``: the loss uses only what the condition
    holds. The support features are moved to the weights' device and dtype.

    Attributes:
        weight: Name of the head's ``(K, F)`` weight in the spec.
        bias: Name of its ``(K,)`` bias, or ``None`` for a head without one.

    Raises:
        TypeError: A condition that is not a floating tensor, or flat weights.
        ValueError: A condition whose shape does not fit the head (the shapes are named).

    Examples:
        >>> import torch
        >>> support = torch.eye(3)[:, None, :] * 5                   # 3 classes, 1 image each, F = 3
        >>> good = {"weight": torch.eye(3)[None], "bias": torch.zeros(1, 3)}
        >>> bad = {"weight": torch.eye(3).roll(1, 0)[None], "bias": torch.zeros(1, 3)}
        >>> loss = SupportCrossEntropy()
        >>> bool(loss(good, [support]) < loss(bad, [support]))
        True
    """

    weight: str = "weight"
    bias: str | None = "bias"

    def __call__(self, weights: Mapping[str, torch.Tensor], conds: Sequence[Any]) -> torch.Tensor:
        if not isinstance(weights, Mapping) or self.weight not in weights or (self.bias is not None and self.bias not in weights):
            want = [self.weight] + ([] if self.bias is None else [self.bias])
            got = sorted(weights) if isinstance(weights, Mapping) else type(weights).__name__
            raise TypeError(f"SupportCrossEntropy needs the head's tensors {want} by name (Guidance(inputs='dict')), got {got}")
        w = weights[self.weight]  # (B, K, F)
        b = weights[self.bias] if self.bias is not None else torch.zeros(w.shape[:2], device=w.device, dtype=w.dtype)  # (B, K)
        if w.dim() != 3 or len(conds) != w.shape[0]:
            raise ValueError(f"SupportCrossEntropy: expected weights (B, K, F) and B conditions, got {tuple(w.shape)} and {len(conds)} conditions")
        _, k, f = w.shape
        xs = []
        for i, c in enumerate(conds):
            if not isinstance(c, torch.Tensor) or not c.is_floating_point():
                raise TypeError(f"SupportCrossEntropy needs each condition as a floating support set (K, S, F); condition {i} is {type(c).__name__}")
            if c.dim() != 3 or c.shape[0] != k or c.shape[2] != f or c.shape[1] < 1:
                raise ValueError(f"SupportCrossEntropy needs each condition as a support set (K={k}, S>=1, F={f}) in the head's class order; condition {i} has shape {tuple(c.shape)}")
            xs.append(c.to(device=w.device, dtype=w.dtype))
        if len({x.shape for x in xs}) == 1:
            s = xs[0].shape[1]
            x = torch.stack(xs).reshape(len(xs), k * s, f)  # (B, K * S, F), class by class
            y = torch.arange(k, device=w.device).repeat_interleave(s).expand(len(xs), -1)  # (B, K * S)
            return head_cross_entropy(w, b, x, y)
        # Support sets of several sizes: one head at a time.
        return torch.cat([
            head_cross_entropy(w[i : i + 1], b[i : i + 1], x.reshape(1, -1, f), torch.arange(k, device=w.device).repeat_interleave(x.shape[1])[None])
            for i, x in enumerate(xs)
        ])  # fmt: skip
