"""Novelty metrics and the memorization baselines every weight generator must beat.

From Zeng et al. (2025), "generative models of weights memorize": a generator earns its
keep only where it beats simple ways of producing weights near the training checkpoints,
at matched novelty. This module gives both sides.

Metrics:
- `nearest_l2`: distance from each generated model to its nearest training checkpoint.
- `wrong_prediction_iou`: the largest overlap (IoU) of a model's wrong predictions
  with any training checkpoint's (1.0 = it errs exactly like some checkpoint).

Baselines (all on flat weight vectors ``(M, D)``, sampled with a ``torch.Generator``):
- `noisy_checkpoints`: a random training checkpoint plus Gaussian noise whose std is
  ``sigma`` times each tensor's scale (`tensor_scale`); sigma 0.06 / 0.12 in the paper.
- `checkpoint_mean`: the average of ``k`` random checkpoints (k = 16).
- `elementwise_gaussian`: independent Gaussians with the zoo's per-entry mean and std.
- `matched_sigma`: the noise level at which noisy checkpoints sit as far from the
  training set as the generated models do.

Examples:
    >>> import torch
    >>> zoo = torch.randn(20, 50)
    >>> g = torch.Generator().manual_seed(0)
    >>> noisy, src = noisy_checkpoints(zoo, 4, sigma=0.01, scale=1.0, generator=g)
    >>> dist, idx = nearest_l2(noisy, zoo)
    >>> bool((idx == src).all())
    True
"""

from __future__ import annotations

import math

import torch

from paramgen.spec import ParamSpec

__all__ = [
    "nearest_l2",
    "wrong_prediction_iou",
    "tensor_scale",
    "noisy_checkpoints",
    "checkpoint_mean",
    "elementwise_gaussian",
    "matched_sigma",
]


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
