"""Linear classifier heads on frozen features, and the pieces to generate them class by class.

A head for a ``K``-class task on ``F`` frozen features is ``W (K, F)``, ``b (K,)``. Its
row ``k`` (``[W[k], b[k]]``, ``F + 1`` numbers) scores class ``k``. Generating a head row
by row, each row conditioned on the images of *its* class in the context of the task
(`class_condition`), makes the head's class order follow the condition's class order by
construction, which a permutation-invariant dataset encoder alone cannot do.
`flag_class` (the whole set with the target class marked by an extra channel) is the
alternative that did not work in `benchmarks.zeroshot`: the aligned set encoder did not
tell the flagged classes apart.

Examples:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.cat([torch.randn(20, 4, generator=g) + 3 * torch.eye(4)[c] for c in range(3)])
    >>> y = torch.arange(3).repeat_interleave(20)
    >>> w, b = train_linear_head(x, y, 3)
    >>> w.shape, head_accuracy(w[None], b[None], x, y).item() > 0.9
    (torch.Size([3, 4]), True)
    >>> flag_class(torch.zeros(3, 2, 4), 1)[:, 0, -1]
    tensor([0., 1., 0.])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "train_linear_head",
    "head_accuracy",
    "flag_class",
    "class_condition",
    "class_means",
    "match_classes",
    "prototype_head",
]


def train_linear_head(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    weight_decay: float = 1e-3,
    steps: int = 100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression with an L2 penalty, full-batch L-BFGS from zero.

    Deterministic: the same data give the same head.

    Args:
        x: ``(N, F)`` features.
        y: ``(N,)`` labels in ``0..num_classes-1``.
        num_classes: ``K``.
        weight_decay: L2 penalty on ``W`` (not on ``b``).
        steps: L-BFGS iterations.

    Returns:
        ``W (K, F)`` and ``b (K,)``.
    """
    if x.dim() != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"train_linear_head: expected x (N, F) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if num_classes < 2 or int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"train_linear_head: expected labels in 0..{num_classes - 1} with num_classes >= 2, got {y.unique().tolist()}")
    x = x.float()
    w = torch.zeros(num_classes, x.shape[1], device=x.device, requires_grad=True)
    b = torch.zeros(num_classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


@torch.no_grad()
def head_accuracy(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Accuracy of ``H`` heads ``W (H, K, F)``, ``b (H, K)`` on ``x (N, F)``, ``y (N,)`` -> ``(H,)``."""
    if w.dim() != 3 or b.shape != w.shape[:2] or x.shape[-1] != w.shape[-1]:
        raise ValueError(f"head_accuracy: expected W (H, K, F), b (H, K), x (N, F), got {tuple(w.shape)}, {tuple(b.shape)}, {tuple(x.shape)}")
    logits = torch.einsum("nf,hkf->hnk", x.float(), w.float()) + b.float()[:, None, :]  # (H, N, K)
    return (logits.argmax(-1) == y.to(logits.device)[None]).float().mean(1)


def flag_class(feats: torch.Tensor, k: int) -> torch.Tensor:
    """Append a channel that is 1 on the images of class ``k``: ``(K, S, F) -> (K, S, F + 1)``.

    The condition of row ``k`` of a generated head: the whole image set (the context of
    the other classes) with the target class marked. No label is used beyond the grouping.
    """
    if feats.dim() != 3 or not 0 <= k < feats.shape[0]:
        raise ValueError(f"flag_class: expected features (K, S, F) and 0 <= k < K, got {tuple(feats.shape)} and k={k}")
    flag = feats.new_zeros(*feats.shape[:2], 1)
    flag[k] = 1.0
    return torch.cat([feats, flag], dim=-1)


def class_condition(feats: torch.Tensor, k: int) -> torch.Tensor:
    """The images of class ``k`` in the context of the task: ``(K, S, F) -> (1, S, 2F)``.

    Each image of class ``k`` becomes ``[f, f - m]`` with ``m`` the mean feature of all
    the task's conditioning images, so the condition says what the class looks like and
    how it differs from the other classes of its task. No label is used beyond the grouping.

    Examples:
        >>> import torch
        >>> class_condition(torch.ones(3, 2, 4), 0).shape
        torch.Size([1, 2, 8])
    """
    if feats.dim() != 3 or not 0 <= k < feats.shape[0]:
        raise ValueError(f"class_condition: expected features (K, S, F) and 0 <= k < K, got {tuple(feats.shape)} and k={k}")
    centre = feats.reshape(-1, feats.shape[-1]).mean(0)  # (F,)
    return torch.cat([feats[k], feats[k] - centre], dim=-1)[None]  # (1, S, 2F)


def class_means(feats: torch.Tensor) -> torch.Tensor:
    """``(K, S, F)`` image features grouped by class -> ``(K, F)`` class means."""
    if feats.dim() != 3:
        raise ValueError(f"class_means: expected features (K, S, F), got {tuple(feats.shape)}")
    return feats.mean(1)


def match_classes(a: torch.Tensor, b: torch.Tensor) -> tuple[float, list[int]]:
    """Best one-to-one matching of the classes of ``a (K, F)`` to those of ``b (K, F)`` by cosine.

    Returns:
        The mean cosine of the matched pairs and ``perm`` with ``a[i]`` matched to ``b[perm[i]]``.

    Examples:
        >>> import torch
        >>> a = torch.eye(3)
        >>> match_classes(a, a[[2, 0, 1]])
        (1.0, [1, 2, 0])
    """
    from scipy.optimize import linear_sum_assignment

    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"match_classes: expected two (K, F) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    sim = F.normalize(a.double(), dim=1) @ F.normalize(b.double(), dim=1).T  # (K, K)
    rows, cols = linear_sum_assignment(-sim.cpu().numpy())
    perm = [int(c) for _, c in sorted(zip(rows.tolist(), cols.tolist(), strict=True))]
    return round(float(sim[torch.arange(len(perm), device=sim.device), torch.tensor(perm, device=sim.device)].mean()), 12), perm


def prototype_head(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest class mean (squared Euclidean) as a linear head: ``W = 2 mu``, ``b = -|mu|^2``."""
    mu = class_means(feats).float()  # (K, F)
    return 2 * mu, -mu.pow(2).sum(1)
