"""Novelty metrics and the memorization baselines every weight generator must beat.

From Zeng et al. (2025), "generative models of weights memorize": a generator earns its
keep only where it beats simple ways of producing weights near the training checkpoints,
at matched novelty. This module gives both sides.

Metrics on weights (flat ``(M, D)`` vectors in memory):
- `nearest_l2`: distance from each generated model to its nearest training checkpoint.
- `wrong_prediction_iou`: the largest overlap (IoU) of a model's wrong predictions
  with any training checkpoint's (1.0 = it errs exactly like some checkpoint).

Metrics on function (predicted class ids of ``M`` models on the same ``N`` test items).
Isotropic noise moves weights far in L2 without changing a prediction, so novelty is
measured on what a model predicts (issue 20's ``novelty_fn`` and ``diversity_fn``):
- `disagreement`, `pairwise_disagreement`, `median_pairwise_disagreement`: the fraction
  of items on which two models' predictions differ.
- `functional_novelty`: each sample's disagreement with its functionally nearest
  reference model, over the reference models' median pairwise disagreement.
- `functional_diversity`: the samples' median pairwise disagreement over a scale.
- `nearest_error_iou`: the IoU of a model's errors with those of a given (nearest) model.

Baselines (all on flat weight vectors ``(M, D)``, sampled with a ``torch.Generator``):
- `noisy_checkpoints`: a random training checkpoint plus Gaussian noise whose std is
  ``sigma`` times each tensor's scale (`tensor_scale`); sigma 0.06 / 0.12 in the paper.
- `checkpoint_mean`: the average of ``k`` random checkpoints (k = 16).
- `elementwise_gaussian`: independent Gaussians with the zoo's per-entry mean and std.
- `matched_sigma`: the noise level at which noisy checkpoints sit as far from the
  training set as the generated models do.

Streaming metrics and baselines on state dicts, for models too large to hold a zoo of as
``(M, D)``: checkpoints come one at a time from an iterable (or a sequence of files or
loaders), so memory stays a few times one checkpoint. Statistics accumulate in float64
on the device of the checkpoints' tensors; results are cast back to each tensor's dtype.
Only floating-point tensors are weights: integer buffers (position ids, BatchNorm's step
counter) are taken from the first checkpoint and left out of distances.
- `RunningMoments`: Welford mean (the soup), std and a per-coordinate Gaussian draw.
- `nearest_l2_state` / `nearest_l2_states`: distance to the nearest checkpoint.
- `pairwise_l2_states` / `median_pairwise_l2`: distances between checkpoints.
- `noise_at_distance`: a state plus an isotropic Gaussian direction of a given L2 length.
- `per_tensor_mean`: each tensor replaced by its own mean.

Examples:
    >>> import torch
    >>> zoo = torch.randn(20, 50)
    >>> g = torch.Generator().manual_seed(0)
    >>> noisy, src = noisy_checkpoints(zoo, 4, sigma=0.01, scale=1.0, generator=g)
    >>> dist, idx = nearest_l2(noisy, zoo)
    >>> bool((idx == src).all())
    True
    >>> preds = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0], [1, 1, 1, 0]])  # 3 models, 4 items
    >>> values, nearest = functional_novelty(preds[:1], preds[1:])
    >>> values.tolist(), nearest.tolist()  # 1 of 4 items differs; the references differ on 2 of 4
    ([0.5], [0])
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch

from paramgen import _random
from paramgen.spec import ParamSpec

__all__ = [
    "nearest_l2",
    "wrong_prediction_iou",
    "tensor_scale",
    "noisy_checkpoints",
    "checkpoint_mean",
    "elementwise_gaussian",
    "matched_sigma",
    "disagreement",
    "pairwise_disagreement",
    "median_pairwise_disagreement",
    "functional_novelty",
    "functional_diversity",
    "nearest_error_iou",
    "RunningMoments",
    "nearest_l2_state",
    "nearest_l2_states",
    "pairwise_l2_states",
    "median_pairwise_l2",
    "noise_at_distance",
    "norm_matched_noise",
    "per_tensor_mean",
]

logger = logging.getLogger(__name__)

StateDict = Mapping[str, torch.Tensor]
# One checkpoint of a sequence: in memory, a loader called when it is needed, or a safetensors file.
CheckpointSource = Mapping[str, torch.Tensor] | Callable[[], Mapping[str, torch.Tensor]] | str | os.PathLike[str]


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (G, D) and (M, D) weight vectors, got {tuple(a.shape)} and {tuple(b.shape)}")


def nearest_l2(generated: torch.Tensor, reference: torch.Tensor, *, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """L2 distance from each row of ``generated`` to its nearest row of ``reference``.

    Returns:
        ``(distances (G,), indices (G,))``.
    """
    _check_pair(generated, reference)
    dists, idxs = [], []
    ref = reference.double()
    for i in range(0, len(generated), batch_size):
        d = torch.cdist(generated[i : i + batch_size].double(), ref)  # (g, M)
        v, j = d.min(dim=1)
        dists.append(v)
        idxs.append(j)
    return torch.cat(dists).float(), torch.cat(idxs)


def wrong_prediction_iou(generated_preds: torch.Tensor, reference_preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Largest IoU of each generated model's wrong-prediction set with a reference model's.

    Args:
        generated_preds: ``(G, T)`` predicted labels on ``T`` test examples.
        reference_preds: ``(M, T)`` predictions of the training checkpoints.
        labels: ``(T,)`` true labels.

    Returns:
        ``(G,)`` in [0, 1]; two models with no errors count as IoU 1.
    """
    if generated_preds.ndim != 2 or reference_preds.ndim != 2 or labels.ndim != 1:
        raise ValueError("expected predictions (G, T), (M, T) and labels (T,)")
    if generated_preds.shape[1] != labels.shape[0] or reference_preds.shape[1] != labels.shape[0]:
        raise ValueError(f"predictions cover {generated_preds.shape[1]} and {reference_preds.shape[1]} examples, labels {labels.shape[0]}")
    wg = (generated_preds != labels).float()  # (G, T)
    wr = (reference_preds != labels).float()  # (M, T)
    inter = wg @ wr.T  # (G, M)
    union = wg.sum(1, keepdim=True) + wr.sum(1) - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))
    return iou.max(dim=1).values


def tensor_scale(spec: ParamSpec, flat: torch.Tensor) -> torch.Tensor:
    """``(D,)`` std of each tensor over the zoo, broadcast to its entries (the weights' scale)."""
    if flat.ndim != 2 or flat.shape[1] != spec.numel:
        raise ValueError(f"expected (M, {spec.numel}) weight vectors, got {tuple(flat.shape)}")
    seg = spec.segment_ids()
    n_t = len(spec.vector_tensors)
    x = flat.double()
    count = torch.bincount(seg, minlength=n_t).double() * x.shape[0]
    mean = torch.zeros(n_t, dtype=torch.float64).index_add_(0, seg, x.sum(0)) / count
    var = torch.zeros(n_t, dtype=torch.float64).index_add_(0, seg, (x - mean[seg]).pow(2).sum(0)) / count
    return var.sqrt()[seg].float()


def noisy_checkpoints(
    reference: torch.Tensor,
    n: int,
    *,
    sigma: float,
    scale: torch.Tensor | float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random training checkpoints plus noise of std ``sigma * scale``.

    Returns:
        ``(samples (n, D), source indices (n,))``.
    """
    src = torch.randint(0, reference.shape[0], (n,), generator=generator)
    noise = torch.randn((n, reference.shape[1]), generator=generator)
    return reference[src] + sigma * scale * noise, src


def checkpoint_mean(reference: torch.Tensor, n: int, *, k: int = 16, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` averages of ``k`` distinct random checkpoints each (a 'model soup' of k)."""
    if reference.shape[0] < k:
        raise ValueError(f"checkpoint_mean needs at least k={k} checkpoints, got {reference.shape[0]}")
    picks = torch.stack([torch.randperm(reference.shape[0], generator=generator)[:k] for _ in range(n)])  # (n, k)
    return reference[picks].mean(dim=1)


def elementwise_gaussian(reference: torch.Tensor, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` samples of independent Gaussians with the zoo's per-entry mean and std."""
    mean, std = reference.mean(0), reference.std(0, unbiased=reference.shape[0] > 1)
    return mean + std * torch.randn((n, reference.shape[1]), generator=generator)


def matched_sigma(
    reference: torch.Tensor,
    target_distance: float,
    *,
    scale: torch.Tensor | float,
    n: int = 64,
    iterations: int = 30,
    generator: torch.Generator | None = None,
) -> float:
    """Noise level whose noisy checkpoints have median nearest-L2 ``target_distance``.

    Bisection on sigma (the median distance grows monotonically with it), with the same
    noise draws at every step so the search is deterministic.
    """
    if target_distance <= 0 or not math.isfinite(target_distance):
        raise ValueError(f"target_distance must be positive and finite, got {target_distance}")
    src = torch.randint(0, reference.shape[0], (n,), generator=generator)
    noise = torch.randn((n, reference.shape[1]), generator=generator) * scale
    base = reference[src]

    def median_distance(sigma: float) -> float:
        return float(nearest_l2(base + sigma * noise, reference)[0].median())

    lo, hi = 0.0, 1.0
    while median_distance(hi) < target_distance:
        hi *= 2
        if hi > 1e6:
            raise ValueError("could not reach the target distance with noise")
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if median_distance(mid) < target_distance else (lo, mid)
    return (lo + hi) / 2


# --------------------------------------------------------------------------- functional metrics
def _check_preds(name: str, preds: object, ndim: int) -> torch.Tensor:
    shape = "(N,)" if ndim == 1 else "(M, N)"
    if not isinstance(preds, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor of class ids {shape}, got {type(preds).__name__}")
    if preds.dtype.is_floating_point or preds.dtype.is_complex:
        raise ValueError(f"{name}: expected integer class ids {shape}, got {preds.dtype} (pass predictions, e.g. logits.argmax(-1), not scores)")
    if preds.ndim != ndim:
        raise ValueError(f"{name}: expected class ids of shape {shape}, got {tuple(preds.shape)}")
    if preds.shape[-1] == 0:
        raise ValueError(f"{name}: predictions cover no items")
    return preds


def _check_items(a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor) -> None:
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"{a_name} covers {a.shape[-1]} items and {b_name} {b.shape[-1]}: expected predictions on the same items")


def _check_scale(scale: float) -> float:
    scale = float(scale)
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be positive and finite, got {scale}")
    return scale


def _cross_disagreement(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(S, M)`` fraction of items on which row ``s`` of ``x`` and row ``m`` of ``y`` differ (float64)."""
    y = y.to(x.device)
    out = torch.empty((x.shape[0], y.shape[0]), dtype=torch.float64, device=x.device)  # (S, M)
    for s in range(x.shape[0]):  # one (M, N) comparison at a time, not (S, M, N)
        out[s] = (x[s] != y).double().mean(dim=1)
    return out


def _upper_median(square: torch.Tensor) -> float:
    """Median of the entries above the diagonal of ``square`` (the average of the middle two for an even count)."""
    i, j = torch.triu_indices(square.shape[0], square.shape[1], offset=1, device=square.device)
    return float(torch.quantile(square[i, j], 0.5))


def disagreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of items on which two models' predicted classes differ.

    Args:
        a: ``(N,)`` class ids of one model.
        b: ``(N,)`` class ids of another on the same items.

    Returns:
        A number in [0, 1].

    Examples:
        >>> import torch
        >>> disagreement(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 0]))
        0.5
    """
    _check_preds("a", a, 1)
    _check_preds("b", b, 1)
    _check_items("a", a, "b", b)
    return float((a != b.to(a.device)).double().mean())


def pairwise_disagreement(preds: torch.Tensor) -> torch.Tensor:
    """Disagreement between every two of ``M`` models.

    Args:
        preds: ``(M, N)`` class ids of ``M`` models on the same ``N`` items.

    Returns:
        ``(M, M)`` float64, symmetric with a zero diagonal, on ``preds``' device.

    Examples:
        >>> import torch
        >>> pairwise_disagreement(torch.tensor([[0, 1], [0, 0], [1, 0]])).tolist()
        [[0.0, 0.5, 1.0], [0.5, 0.0, 0.5], [1.0, 0.5, 0.0]]
    """
    _check_preds("preds", preds, 2)
    return _cross_disagreement(preds, preds)


def median_pairwise_disagreement(preds: torch.Tensor) -> float:
    """Median disagreement over the ``M (M - 1) / 2`` pairs of ``M >= 2`` models.

    The scale of `functional_novelty` and `functional_diversity`: how much two training
    checkpoints of one task (e.g. two seeds) differ in function.

    Args:
        preds: ``(M, N)`` class ids.

    Returns:
        The median (the average of the middle two for an even number of pairs).

    Examples:
        >>> import torch
        >>> median_pairwise_disagreement(torch.tensor([[0, 1], [0, 0], [1, 0]]))
        0.5
    """
    _check_preds("preds", preds, 2)
    if preds.shape[0] < 2:
        raise ValueError(f"median_pairwise_disagreement needs at least 2 models, got {preds.shape[0]}")
    return _upper_median(_cross_disagreement(preds, preds))


def functional_novelty(preds: torch.Tensor, reference: torch.Tensor, *, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """How new in function each sample is: its disagreement with the nearest reference model, over a scale.

    Issue 20's ``novelty_fn``. 0 means the sample predicts exactly like some training
    checkpoint; 1 means it differs from the nearest one as much as two training
    checkpoints typically differ from each other.

    Args:
        preds: ``(S, N)`` class ids of the samples on ``N`` test items.
        reference: ``(M, N)`` class ids of the training checkpoints on the same items.
        scale: What a disagreement is divided by. Default: the reference models' median
            pairwise disagreement (`median_pairwise_disagreement`), which needs ``M >= 2``.

    Returns:
        ``(values (S,) float64, nearest (S,) long)``: the scaled disagreement and the
        index of the functionally nearest reference row (the first one on ties), on
        ``preds``' device.

    Raises:
        ValueError: Shapes or dtypes are not class ids on the same items; ``scale`` is not
            given and ``M < 2`` or the reference models all predict alike (scale 0).

    Examples:
        >>> import torch
        >>> ref = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1]])
        >>> values, nearest = functional_novelty(torch.tensor([[0, 0, 0, 1], [1, 1, 1, 1]]), ref)
        >>> values.tolist(), nearest.tolist()
        ([0.5, 1.0], [0, 1])
    """
    _check_preds("preds", preds, 2)
    _check_preds("reference", reference, 2)
    _check_items("preds", preds, "reference", reference)
    if reference.shape[0] == 0:
        raise ValueError("reference: expected at least one reference model, got none")
    if scale is None:
        if reference.shape[0] < 2:
            raise ValueError("functional_novelty: the default scale is the median disagreement between two reference models, but there is 1; pass scale=")
        scale = median_pairwise_disagreement(reference)
        if scale == 0:
            raise ValueError("functional_novelty: the reference models predict alike (median pairwise disagreement 0); pass scale=")
    scale = _check_scale(scale)
    values, nearest = _cross_disagreement(preds, reference).min(dim=1)  # (S,), (S,)
    return values / scale, nearest


def functional_diversity(preds: torch.Tensor, *, scale: float) -> float:
    """How different a method's samples are from each other: their median pairwise disagreement over ``scale``.

    Issue 20's ``diversity_fn``, with ``scale`` the training checkpoints'
    `median_pairwise_disagreement` (so 1 means the samples differ as much as seeds do).

    Args:
        preds: ``(S, N)`` class ids of ``S >= 2`` samples.
        scale: Positive divisor.

    Returns:
        The scaled median.

    Examples:
        >>> import torch
        >>> functional_diversity(torch.tensor([[0, 1], [0, 0], [1, 0]]), scale=0.25)
        2.0
    """
    _check_preds("preds", preds, 2)
    if preds.shape[0] < 2:
        raise ValueError(f"functional_diversity needs at least 2 samples, got {preds.shape[0]}")
    return _upper_median(_cross_disagreement(preds, preds)) / _check_scale(scale)


def nearest_error_iou(preds: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor, nearest: torch.Tensor) -> torch.Tensor:
    """IoU of each sample's wrong predictions with those of one given reference model.

    With ``nearest`` from `functional_novelty`, this is the error overlap with the
    functionally nearest checkpoint (`wrong_prediction_iou` takes the largest over all).

    Args:
        preds: ``(S, N)`` class ids of the samples.
        reference: ``(M, N)`` class ids of the reference models.
        labels: ``(N,)`` true classes.
        nearest: ``(S,)`` index of the reference row each sample is compared with.

    Returns:
        ``(S,)`` float64 in [0, 1]; two models without errors count as IoU 1.

    Examples:
        >>> import torch
        >>> labels = torch.tensor([0, 0, 0, 0])
        >>> ref = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
        >>> nearest_error_iou(torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0]]), ref, labels, torch.tensor([0, 1])).tolist()
        [0.3333333333333333, 1.0]
    """
    _check_preds("preds", preds, 2)
    _check_preds("reference", reference, 2)
    _check_preds("labels", labels, 1)
    _check_items("preds", preds, "labels", labels)
    _check_items("reference", reference, "labels", labels)
    if nearest.shape != (preds.shape[0],) or nearest.dtype.is_floating_point:
        raise ValueError(f"nearest: expected ({preds.shape[0]},) integer indices, got {tuple(nearest.shape)} {nearest.dtype}")
    if len(nearest) and (int(nearest.min()) < 0 or int(nearest.max()) >= reference.shape[0]):
        raise ValueError(f"nearest: indices must lie in [0, {reference.shape[0]}), got {nearest.tolist()}")
    device = preds.device
    labels = labels.to(device)
    wrong_s = preds != labels  # (S, N)
    wrong_r = reference.to(device)[nearest.to(device)] != labels  # (S, N)
    inter = (wrong_s & wrong_r).double().sum(1)
    union = (wrong_s | wrong_r).double().sum(1)
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


# --------------------------------------------------------------------------- streaming, on state dicts
def _is_weight(t: torch.Tensor) -> bool:
    return t.dtype.is_floating_point


def _layout(state: StateDict, what: str) -> dict[str, tuple[torch.Size, torch.dtype]]:
    if not isinstance(state, Mapping):
        raise TypeError(f"{what}: expected a state dict (a mapping of names to tensors), got {type(state).__name__}")
    layout = {}
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what}: {name!r} is a {type(t).__name__}, expected a tensor")
        layout[name] = (t.shape, t.dtype)
    if not any(dtype.is_floating_point for _, dtype in layout.values()):
        raise ValueError(f"{what}: no floating-point tensors (weights) in {sorted(layout)[:5]}")
    return layout


def _check_like(state: StateDict, layout: Mapping[str, tuple[torch.Size, torch.dtype]], what: str, first: str) -> None:
    """``state`` has ``layout``'s names and shapes, or a ValueError names the first difference."""
    if not isinstance(state, Mapping):
        raise TypeError(f"{what}: expected a state dict (a mapping of names to tensors), got {type(state).__name__}")
    missing = [n for n in layout if n not in state]
    extra = [n for n in state if n not in layout]
    if missing or extra:
        raise ValueError(f"{what} does not have the tensors of {first}: missing {missing[:5]}, extra {extra[:5]}")
    for name, (shape, dtype) in layout.items():
        t = state[name]
        if t.shape != shape:
            raise ValueError(f"{what}: tensor {name!r} has shape {tuple(t.shape)} where {first} has {tuple(shape)}")
        if t.dtype.is_floating_point != dtype.is_floating_point:
            raise ValueError(f"{what}: tensor {name!r} is {t.dtype} where {first} has {dtype}")


def _check_finite(state: StateDict, what: str) -> None:
    for name, t in state.items():
        if _is_weight(t) and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{what}: tensor {name!r} has NaN or infinite values")


class RunningMoments:
    """Per-coordinate mean and std of checkpoints seen one at a time (Welford, float64).

    Holds two float64 copies of one checkpoint (mean and sum of squared deviations),
    whatever the number of checkpoints. `mean` is the "soup" baseline, `sample` the
    per-coordinate Gaussian baseline (the streaming `elementwise_gaussian`).

    Accumulators live on the device of each tensor of the first checkpoint; later
    checkpoints are moved there. Integer tensors are buffers, not weights: they are kept
    from the first checkpoint (std 0).

    Examples:
        >>> import torch
        >>> moments = RunningMoments()
        >>> for w in (1.0, 2.0, 6.0):
        ...     moments.update({"w": torch.full((2,), w), "step": torch.tensor(7)})
        >>> moments.count, moments.mean()["w"].tolist(), moments.std()["w"].tolist()
        (3, [3.0, 3.0], [2.6457512378692627, 2.6457512378692627])
        >>> moments.sample(generator=torch.Generator().manual_seed(0))["step"].item()
        7
    """

    def __init__(self) -> None:
        self._count = 0
        self._layout: dict[str, tuple[torch.Size, torch.dtype]] = {}
        self._mean: dict[str, torch.Tensor] = {}  # float64 per weight tensor
        self._m2: dict[str, torch.Tensor] = {}  # float64 sum of squared deviations
        self._kept: dict[str, torch.Tensor] = {}  # integer buffers of the first checkpoint

    @property
    def count(self) -> int:
        """How many checkpoints were added."""
        return self._count

    def update(self, state: StateDict) -> None:
        """Add one checkpoint.

        Raises:
            ValueError: Its names or shapes differ from the first checkpoint's, or a
                weight holds NaN or infinity (the moments are then unchanged).
        """
        what = f"checkpoint {self._count}"
        if self._count == 0:
            layout = _layout(state, what)
        else:
            _check_like(state, self._layout, what, "checkpoint 0")
        _check_finite(state, what)
        if self._count == 0:
            self._layout = layout
            for name, t in state.items():
                if _is_weight(t):
                    self._mean[name] = torch.zeros(t.shape, dtype=torch.float64, device=t.device)
                    self._m2[name] = torch.zeros(t.shape, dtype=torch.float64, device=t.device)
                else:
                    self._kept[name] = t.detach().clone()
        n = self._count + 1
        for name, mean in self._mean.items():
            x = state[name].detach().to(device=mean.device, dtype=torch.float64)
            delta = x - mean
            mean += delta / n
            self._m2[name] += delta * (x - mean)
        self._count = n

    def _require(self, at_least: int, what: str) -> None:
        if self._count < at_least:
            raise ValueError(f"RunningMoments.{what} needs at least {at_least} checkpoint(s), got {self._count}")

    def _out(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Weights from ``values`` (float64) cast back to their dtype; integer buffers as kept; the first checkpoint's order."""
        return {name: values[name].to(dtype) if name in values else self._kept[name].clone() for name, (_, dtype) in self._layout.items()}

    def mean(self) -> dict[str, torch.Tensor]:
        """The mean of the checkpoints (the soup), in each tensor's dtype."""
        self._require(1, "mean")
        return self._out(self._mean)

    def _std64(self, unbiased: bool) -> dict[str, torch.Tensor]:
        denom = self._count - 1 if unbiased else self._count
        return {name: (m2 / denom).sqrt() for name, m2 in self._m2.items()}

    def std(self, *, unbiased: bool = True) -> dict[str, torch.Tensor]:
        """Per-coordinate standard deviation (``unbiased``: over ``count - 1``, which needs 2 checkpoints).

        Integer buffers get zeros.
        """
        self._require(2 if unbiased else 1, "std")
        std = self._std64(unbiased)
        return {name: std[name].to(dtype) if name in std else torch.zeros_like(self._kept[name]) for name, (_, dtype) in self._layout.items()}

    def sample(self, *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """One draw of independent Gaussians with the per-coordinate mean and std.

        The convention of `elementwise_gaussian`: the unbiased std, or 0 (the mean
        itself) after a single checkpoint. Noise is drawn tensor by tensor in the first
        checkpoint's order (`paramgen._random.randn`: in float32 on the generator's
        device), so one seed gives one sample on any device.
        """
        self._require(1, "sample")
        std = self._std64(unbiased=True) if self._count > 1 else {name: torch.zeros_like(m) for name, m in self._mean.items()}
        draw = {}
        for name, mean in self._mean.items():
            z = _random.randn(mean.shape, generator=generator, device=mean.device, dtype=torch.float64)
            draw[name] = mean + std[name] * z
        return self._out(draw)


def _sq_distance(a: StateDict, b: StateDict, names: Iterable[str]) -> torch.Tensor:
    """Squared L2 distance in float64 over the tensors ``names``, on the device of ``a``'s tensors."""
    total: torch.Tensor | None = None
    for name in names:
        x = a[name].detach().double()
        part = (x - b[name].detach().to(device=x.device, dtype=torch.float64)).pow(2).sum()
        total = part if total is None else total + part.to(total.device)
    assert total is not None  # layouts have at least one weight
    return total


def _weight_names(layout: Mapping[str, tuple[torch.Size, torch.dtype]]) -> list[str]:
    return [name for name, (_, dtype) in layout.items() if dtype.is_floating_point]


def nearest_l2_states(candidates: Sequence[StateDict], checkpoints: Iterable[StateDict]) -> tuple[torch.Tensor, torch.Tensor]:
    """L2 distance from each candidate to its nearest checkpoint, in one pass over the checkpoints.

    The streaming `nearest_l2`: the distance is summed tensor by tensor in float64 over
    the floating-point tensors, and each checkpoint is dropped once compared.

    Args:
        candidates: ``S`` state dicts (held in memory).
        checkpoints: State dicts with the candidates' names and shapes, one at a time.

    Returns:
        ``(distances (S,) float64, indices (S,) long)``, the index of the first nearest
        checkpoint in iteration order, on the device of the first candidate's first weight.

    Examples:
        >>> import torch
        >>> zoo = [{"w": torch.tensor([0.0, 0.0])}, {"w": torch.tensor([3.0, 4.0])}]
        >>> d, i = nearest_l2_states([{"w": torch.tensor([3.0, 3.0])}], iter(zoo))
        >>> d.tolist(), i.tolist()
        ([1.0], [1])
    """
    if len(candidates) == 0:
        raise ValueError("nearest_l2_states: expected at least one candidate, got none")
    layout = _layout(candidates[0], "candidate 0")
    for s, cand in enumerate(candidates[1:], start=1):
        _check_like(cand, layout, f"candidate {s}", "candidate 0")
    names = _weight_names(layout)
    device = candidates[0][names[0]].device
    best = torch.full((len(candidates),), math.inf, dtype=torch.float64, device=device)  # (S,)
    index = torch.full((len(candidates),), -1, dtype=torch.long, device=device)  # (S,)
    m = -1
    for m, ckpt in enumerate(checkpoints):
        _check_like(ckpt, layout, f"checkpoint {m}", "the candidates")
        d = torch.stack([_sq_distance(cand, ckpt, names).to(device) for cand in candidates]).sqrt()  # (S,)
        if not bool(torch.isfinite(d).all()):
            raise ValueError(f"the distance to checkpoint {m} is not finite: it or a candidate holds NaN or infinite values")
        closer = d < best
        best = torch.where(closer, d, best)
        index = torch.where(closer, torch.full_like(index, m), index)
    if m < 0:
        raise ValueError("nearest_l2_states: the checkpoints are empty")
    return best, index


def nearest_l2_state(candidate: StateDict, checkpoints: Iterable[StateDict]) -> tuple[float, int]:
    """L2 distance from one state dict to its nearest checkpoint, and that checkpoint's index.

    See `nearest_l2_states` (several candidates in one pass over the checkpoints).

    Examples:
        >>> import torch
        >>> zoo = [{"w": torch.tensor([0.0, 0.0])}, {"w": torch.tensor([3.0, 4.0])}]
        >>> nearest_l2_state({"w": torch.tensor([0.0, 1.0])}, zoo)
        (1.0, 0)
    """
    d, i = nearest_l2_states([candidate], checkpoints)
    return float(d[0]), int(i[0])


def _load(source: CheckpointSource, what: str) -> StateDict:
    if isinstance(source, Mapping):
        return source
    if isinstance(source, (str, os.PathLike)):
        from safetensors.torch import load_file

        return load_file(os.fspath(source))
    if callable(source):
        state = source()
        if not isinstance(state, Mapping):
            raise TypeError(f"{what}: the loader returned a {type(state).__name__}, expected a state dict")
        return state
    raise TypeError(f"{what}: expected a state dict, a loader (a callable returning one) or a safetensors path, got {type(source).__name__}")


def _identity(state: StateDict) -> StateDict:
    return state


def _passes(checkpoints: Sequence[CheckpointSource] | Callable[[], Iterable[StateDict]]) -> tuple[Callable[[], Iterator[Callable[[], StateDict]]], int | None]:
    """``(open_pass, M)``: each ``open_pass()`` yields one loader per checkpoint, in order; ``M`` when known up front."""
    if isinstance(checkpoints, (str, os.PathLike, Mapping, Iterator)):
        raise TypeError(
            "expected a sequence of checkpoints (state dicts, loaders or safetensors paths) or a callable returning a fresh iterable of "
            f"state dicts (the checkpoints are read more than once), got {type(checkpoints).__name__}"
        )
    if isinstance(checkpoints, Sequence):
        sources = list(checkpoints)

        def open_sequence() -> Iterator[Callable[[], StateDict]]:
            for i, src in enumerate(sources):
                yield functools.partial(_load, src, f"checkpoint {i}")  # loaded only when called

        return open_sequence, len(sources)
    if callable(checkpoints):
        factory = checkpoints

        def open_factory() -> Iterator[Callable[[], StateDict]]:
            for state in factory():
                yield functools.partial(_identity, state)

        return open_factory, None
    raise TypeError(f"expected a sequence of checkpoints or a callable returning an iterable of them, got {type(checkpoints).__name__}")


def pairwise_l2_states(checkpoints: Sequence[CheckpointSource] | Callable[[], Iterable[StateDict]]) -> torch.Tensor:
    """L2 distances between every two of ``M`` checkpoints, holding two at a time.

    The checkpoints are read ``M - 1`` times (pass ``p`` holds checkpoint ``p`` and
    compares the later ones with it), so they come as something that can be read again:

    - a sequence of sources, each a state dict, a loader (a callable returning one) or a
      safetensors path; a loader or path is loaded when needed and dropped after;
    - or a callable returning a fresh iterable of state dicts per call (every pass must
      yield the same checkpoints in the same order).

    Meant for the few checkpoints of one task (3-10): the work grows as ``M**2``.

    Returns:
        ``(M, M)`` float64, symmetric with a zero diagonal, on the device of the first
        checkpoint's first weight.

    Raises:
        ValueError: Fewer than 2 checkpoints; names or shapes differ; the passes of a
            callable yield different numbers of checkpoints; a distance is not finite.
        TypeError: A one-shot iterator or a single state dict was passed.

    Examples:
        >>> import torch
        >>> zoo = [{"w": torch.tensor([0.0, 0.0])}, {"w": torch.tensor([3.0, 4.0])}, {"w": torch.tensor([0.0, 1.0])}]
        >>> pairwise_l2_states(zoo).tolist()
        [[0.0, 5.0, 1.0], [5.0, 0.0, 4.242640687119285], [1.0, 4.242640687119285, 0.0]]
        >>> pairwise_l2_states(lambda: iter(zoo))[0, 1].item()
        5.0
    """
    open_pass, known = _passes(checkpoints)
    if known is not None and known < 2:
        raise ValueError(f"pairwise_l2_states needs at least 2 checkpoints, got {known}")
    layout: dict[str, tuple[torch.Size, torch.dtype]] = {}
    names: list[str] = []
    pairs: dict[tuple[int, int], torch.Tensor] = {}
    m = known
    p = 0
    while m is None or p < m - 1:
        anchor: StateDict | None = None
        seen = 0
        for i, load in enumerate(open_pass()):
            seen = i + 1
            if i < p:
                continue  # compared with the anchor in an earlier pass
            state = load()
            if not layout:
                layout = _layout(state, "checkpoint 0")
                names = _weight_names(layout)
            else:
                _check_like(state, layout, f"checkpoint {i}", "checkpoint 0")
            if i == p:
                anchor = state
            else:
                assert anchor is not None
                pairs[(p, i)] = _sq_distance(anchor, state, names).sqrt()
            del state
        logger.debug("pairwise_l2_states: pass %d read %d checkpoints", p, seen)
        if m is None:
            if seen < 2:
                raise ValueError(f"pairwise_l2_states needs at least 2 checkpoints, got {seen}")
            m = seen
        elif seen != m:
            raise ValueError(f"the checkpoints yielded {seen} state dicts on pass {p} and {m} on the first: pass a callable that returns a fresh iterable each call")
        p += 1
    device = pairs[(0, 1)].device
    out = torch.zeros((m, m), dtype=torch.float64, device=device)  # (M, M)
    for (i, j), d in pairs.items():
        if not bool(torch.isfinite(d)):
            raise ValueError(f"the distance between checkpoints {i} and {j} is {float(d)}: a checkpoint holds NaN or infinite values")
        out[i, j] = out[j, i] = d.to(device)
    return out


def median_pairwise_l2(checkpoints: Sequence[CheckpointSource] | Callable[[], Iterable[StateDict]]) -> float:
    """Median L2 distance over the ``M (M - 1) / 2`` pairs of checkpoints (the scale of ``novelty_l2``).

    Takes what `pairwise_l2_states` takes. The median of an even number of pairs is the
    average of the middle two.

    Examples:
        >>> import torch
        >>> zoo = [{"w": torch.tensor([0.0, 0.0])}, {"w": torch.tensor([3.0, 4.0])}, {"w": torch.tensor([0.0, 1.0])}]
        >>> round(median_pairwise_l2(zoo), 4)
        4.2426
    """
    return _upper_median(pairwise_l2_states(checkpoints))


def noise_at_distance(state: StateDict, distance: float, *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """``state`` plus an isotropic Gaussian direction over all its weights, scaled to L2 length ``distance``.

    Zeng et al.'s "checkpoint plus noise" baseline at a chosen L2 novelty: the noise is
    drawn tensor by tensor in ``state``'s order (float32 draws from ``generator``, see
    `paramgen._random`), normalized over all floating-point coordinates together, and
    added in float64. The result is ``distance`` away from ``state`` up to the rounding of
    its dtype (exactly, to float64 precision, for float64 weights). Integer buffers are copied.

    Args:
        state: A state dict.
        distance: The L2 length of the added noise, ``>= 0``.
        generator: Randomness.

    Returns:
        A new state dict, tensors on their devices and in their dtypes.

    Examples:
        >>> import torch
        >>> state = {"a": torch.zeros(3, dtype=torch.float64), "b": torch.ones(2, 2, dtype=torch.float64)}
        >>> noisy = noise_at_distance(state, 2.0, generator=torch.Generator().manual_seed(0))
        >>> round(nearest_l2_state(noisy, [state])[0], 12)
        2.0
    """
    distance = float(distance)
    if not (distance >= 0 and math.isfinite(distance)):
        raise ValueError(f"distance must be finite and >= 0, got {distance}")
    layout = _layout(state, "state")
    noise: dict[str, torch.Tensor] = {}
    sq = 0.0
    for name in _weight_names(layout):
        t = state[name]
        z = _random.randn(t.shape, generator=generator, device=t.device, dtype=torch.float64)
        noise[name] = z
        sq += float(z.pow(2).sum())
    if sq == 0.0:
        raise ValueError("noise_at_distance: the state has no weight coordinates to move")
    factor = distance / math.sqrt(sq)
    return {name: (t.detach().double() + noise[name] * factor).to(t.dtype) if name in noise else t.detach().clone() for name, t in state.items()}


def per_tensor_mean(state: StateDict) -> dict[str, torch.Tensor]:
    """Each floating-point tensor replaced by its own mean (computed in float64); integer buffers copied.

    The "no structure" baseline: what a generator that learned only each tensor's
    offset would produce.

    Examples:
        >>> import torch
        >>> per_tensor_mean({"w": torch.tensor([[1.0, 2.0], [3.0, 6.0]]), "n": torch.tensor(3)})
        {'w': tensor([[3., 3.],
                [3., 3.]]), 'n': tensor(3)}
    """
    _layout(state, "state")
    return {name: t.detach().double().mean().to(t.dtype).expand_as(t).clone() if _is_weight(t) else t.detach().clone() for name, t in state.items()}


def norm_matched_noise(reference: StateDict, like: StateDict, *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """A random state with, tensor by tensor, the norm of ``like`` and its distance to ``reference``.

    The noise baseline for a generated sample ``like``: per floating-point tensor, with
    ``r = reference[name]`` and ``g = like[name]``, the result keeps ``g``'s component
    along ``r`` and replaces its component orthogonal to ``r`` by a random direction
    orthogonal to ``r`` of the same length. So ``||c|| == ||g||`` and ``||c - r|| ==
    ||g - r||`` (to float64 rounding, then the dtype's): the noise is as far from the
    reference as the sample and has its norm, unlike ``r + noise`` (whose norm grows by
    ``sqrt(1 + (d / ||r||)^2)``). A zero ``r`` gives a random direction of norm ``||g||``.
    Integer buffers of ``like`` are copied; a tensor of ``like`` missing from ``reference``
    is an error; names of ``reference`` missing from ``like`` are not returned.

    Args:
        reference: The state the distance is measured to (e.g. the nearest training checkpoint).
        like: The state whose per-tensor norm and distance to ``reference`` are matched.
        generator: Randomness (float32 draws, see `paramgen._random`).

    Returns:
        A new state dict with ``like``'s names, shapes, dtypes and devices.

    Raises:
        KeyError: A tensor of ``like`` is missing from ``reference``.
        ValueError: Shapes differ, or a tensor is not finite.

    Examples:
        >>> import torch
        >>> r = {"w": torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64)}
        >>> g = {"w": torch.tensor([3.0, 4.0, 0.0], dtype=torch.float64)}
        >>> c = norm_matched_noise(r, g, generator=torch.Generator().manual_seed(0))
        >>> round(float(c["w"].norm()), 9), round(float((c["w"] - r["w"]).norm()), 9), float(c["w"][0])
        (5.0, 4.0, 3.0)
    """
    out: dict[str, torch.Tensor] = {}
    for name, g in like.items():
        if name not in reference:
            raise KeyError(f"norm_matched_noise: {name!r} of like is not in reference")
        r = reference[name]
        if not _is_weight(g):
            out[name] = g.detach().clone()
            continue
        if r.shape != g.shape:
            raise ValueError(f"norm_matched_noise: {name!r} has shape {tuple(g.shape)} in like, {tuple(r.shape)} in reference")
        g64 = g.detach().double().reshape(-1)
        r64 = r.detach().to(g64.device, torch.float64).reshape(-1)
        if not (torch.isfinite(g64).all() and torch.isfinite(r64).all()):
            raise ValueError(f"norm_matched_noise: {name!r} is not finite")
        r_norm = float(r64.norm())
        r_hat = r64 / r_norm if r_norm > 0 else torch.zeros_like(r64)
        along = float(g64 @ r_hat)
        ortho = float((g64 - along * r_hat).norm())
        u = _random.randn(g64.shape, generator=generator, device=g64.device, dtype=torch.float64)
        u = u - float(u @ r_hat) * r_hat
        u_norm = float(u.norm())
        if u_norm == 0.0:  # a one-value tensor with r != 0 has no orthogonal direction
            u_norm, u = 1.0, torch.zeros_like(u)
        out[name] = (along * r_hat + ortho * u / u_norm).reshape(g.shape).to(g.dtype)
    return out
