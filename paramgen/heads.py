"""Linear classifier heads on frozen features, and the pieces to generate them class by class.

A head for a ``K``-class task on ``F`` frozen features is ``W (K, F)``, ``b (K,)``
(`head_spec`: the tensors of ``nn.Linear(F, K)``). Its row ``k`` (``[W[k], b[k]]``,
``F + 1`` numbers) scores class ``k``.

Fitting and scoring: `train_linear_head` (one head, L-BFGS), `fit_heads` (many heads at
once, each on its own data, Adam), `logistic_regression_heads` (scikit-learn, one per
support set), `prototype_head` (nearest class mean as a linear head); `head_logits`,
`head_accuracy` and `head_cross_entropy` score many heads at once. Generating a head row
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

from paramgen.spec import ParamSpec

__all__ = [
    "head_spec",
    "train_linear_head",
    "fit_heads",
    "logistic_regression_heads",
    "head_logits",
    "head_accuracy",
    "head_cross_entropy",
    "flag_class",
    "class_condition",
    "class_means",
    "match_classes",
    "prototype_head",
]


def head_spec(feature_dim: int, num_classes: int) -> ParamSpec:
    """The spec of a linear head, the tensors of ``nn.Linear(feature_dim, num_classes)``.

    Args:
        feature_dim: ``F``.
        num_classes: ``K``.

    Returns:
        A spec of ``weight (K, F)`` and ``bias (K,)``, float32.

    Raises:
        ValueError: ``feature_dim < 1`` or ``num_classes < 2``.

    Examples:
        >>> head_spec(4, 3).numel  # 3 x 4 + 3
        15
    """
    if feature_dim < 1 or num_classes < 2:
        raise ValueError(f"head_spec: expected feature_dim >= 1 and num_classes >= 2, got {feature_dim} and {num_classes}")
    return ParamSpec.from_state_dict({"weight": torch.zeros(num_classes, feature_dim), "bias": torch.zeros(num_classes)})


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


def head_logits(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``H`` heads, each on its own inputs: ``w (H, K, F)``, ``b (H, K)``, ``x (H, N, F)`` -> ``(H, N, K)``.

    Raises:
        ValueError: Shapes that do not fit together.

    Examples:
        >>> import torch
        >>> head_logits(torch.ones(2, 3, 4), torch.zeros(2, 3), torch.ones(2, 5, 4)).shape
        torch.Size([2, 5, 3])
    """
    if w.dim() != 3 or b.shape != w.shape[:2] or x.dim() != 3 or x.shape[0] != w.shape[0] or x.shape[-1] != w.shape[-1]:
        raise ValueError(f"head_logits: expected W (H, K, F), b (H, K), x (H, N, F), got {tuple(w.shape)}, {tuple(b.shape)}, {tuple(x.shape)}")
    return torch.einsum("bnf,bkf->bnk", x, w) + b[:, None, :]


@torch.no_grad()
def head_accuracy(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Accuracy ``(H,)`` of ``H`` heads ``W (H, K, F)``, ``b (H, K)``.

    Args:
        w: ``(H, K, F)`` weights.
        b: ``(H, K)`` biases.
        x: ``(N, F)`` inputs shared by every head, or ``(H, N, F)``, each head's own.
        y: ``(N,)`` labels, or ``(H, N)`` with per-head inputs.

    Returns:
        ``(H,)`` the fraction of correct argmax predictions per head.

    Raises:
        ValueError: Shapes that do not fit together.

    Examples:
        >>> import torch
        >>> w, b = torch.eye(2)[None], torch.zeros(1, 2)
        >>> head_accuracy(w, b, torch.eye(2), torch.tensor([0, 0]))
        tensor([0.5000])
        >>> head_accuracy(w.expand(3, 2, 2), b.expand(3, 2), torch.eye(2).expand(3, 2, 2), torch.tensor([0, 1]).expand(3, 2))
        tensor([1., 1., 1.])
    """
    if w.dim() != 3 or b.shape != w.shape[:2] or x.shape[-1] != w.shape[-1] or x.dim() not in (2, 3):
        raise ValueError(f"head_accuracy: expected W (H, K, F), b (H, K), x (N, F) or (H, N, F), got {tuple(w.shape)}, {tuple(b.shape)}, {tuple(x.shape)}")
    if y.shape != x.shape[:-1]:
        raise ValueError(f"head_accuracy: expected labels of shape {tuple(x.shape[:-1])} for x {tuple(x.shape)}, got {tuple(y.shape)}")
    if x.dim() == 3:  # each head on its own inputs
        return (head_logits(w.float(), b.float(), x.float()).argmax(-1) == y.to(w.device)).float().mean(1)
    logits = torch.einsum("nf,hkf->hnk", x.float(), w.float()) + b.float()[:, None, :]  # (H, N, K)
    return (logits.argmax(-1) == y.to(logits.device)[None]).float().mean(1)


def head_cross_entropy(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy ``(H,)`` of ``H`` heads, each on its own inputs ``x (H, N, F)``, labels ``y (H, N)``.

    Differentiable (`fit_heads` minimizes it).

    Raises:
        ValueError: Shapes that do not fit together.
    """
    logits = head_logits(w, b, x)  # (H, N, K)
    if y.shape != logits.shape[:2]:
        raise ValueError(f"head_cross_entropy: expected labels of shape {tuple(logits.shape[:2])}, got {tuple(y.shape)}")
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)


def fit_heads(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    steps: int,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``H`` independent linear heads at once by full-batch Adam on cross-entropy.

    Deterministic: the same data give the same heads.

    Args:
        x: ``(H, N, F)`` features of each head's training set.
        y: ``(H, N)`` labels in ``0..num_classes-1``.
        num_classes: ``K``, classes per head.
        steps: Adam steps (0 returns the initial heads).
        lr: Adam learning rate.
        weight_decay: L2 penalty ``weight_decay / 2 * |w|^2`` per head (bias excluded).
        init: ``(w (H, K, F), b (H, K))`` to start from; ``None`` starts from zero.

    Returns:
        ``w (H, K, F)``, ``b (H, K)`` on the device of ``x``.

    Raises:
        ValueError: Shapes that do not fit, labels out of range or ``steps < 0``.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # one head, two points
        >>> w, b = fit_heads(x, torch.tensor([[0, 1]]), 2, steps=50)
        >>> head_accuracy(w, b, x, torch.tensor([[0, 1]]))
        tensor([1.])
    """
    if x.dim() != 3 or y.shape != x.shape[:2]:
        raise ValueError(f"fit_heads: expected x (H, N, F) and y (H, N), got {tuple(x.shape)} and {tuple(y.shape)}")
    if num_classes < 2 or y.numel() == 0 or int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"fit_heads: expected labels in 0..{num_classes - 1} with num_classes >= 2, got {y.unique().tolist()}")
    if steps < 0:
        raise ValueError(f"fit_heads: expected steps >= 0, got {steps}")
    bsz, _, f = x.shape
    if init is None:
        w, b = torch.zeros(bsz, num_classes, f, device=x.device), torch.zeros(bsz, num_classes, device=x.device)
    else:
        if init[0].shape != (bsz, num_classes, f) or init[1].shape != (bsz, num_classes):
            raise ValueError(f"fit_heads: expected init w {(bsz, num_classes, f)} and b {(bsz, num_classes)}, got {tuple(init[0].shape)} and {tuple(init[1].shape)}")
        w, b = init[0].detach().clone().float(), init[1].detach().clone().float()
    if steps == 0:
        return w, b
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.Adam([w, b], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            # A sum over heads keeps each head's gradient independent of H.
            loss = head_cross_entropy(w, b, x, y).sum() + 0.5 * weight_decay * w.pow(2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return w.detach(), b.detach()


def logistic_regression_heads(support: torch.Tensor, *, c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression per support set (scikit-learn, L-BFGS, inverse L2 strength ``c``).

    Needs scikit-learn (``pip install 'paramgen[data]'``).

    Args:
        support: ``(E, K, S, F)``: ``E`` support sets of ``K`` classes, ``S`` images each,
            classes in label order.
        c: scikit-learn's ``C``.

    Returns:
        ``w (E, K, F)``, ``b (E, K)`` float32 on the CPU.

    Raises:
        ValueError: ``support`` is not ``(E, K, S, F)`` with ``K >= 2``.
    """
    from paramgen._optional import require

    if support.dim() != 4 or support.shape[1] < 2:
        raise ValueError(f"logistic_regression_heads: expected support sets (E, K, S, F) with K >= 2, got {tuple(support.shape)}")
    linear_model = require("sklearn.linear_model", extra="data", feature="logistic_regression_heads")
    e, k, s, f = support.shape
    w, b = torch.zeros(e, k, f), torch.zeros(e, k)
    y = torch.arange(k).repeat_interleave(s).numpy()
    for i in range(e):
        model = linear_model.LogisticRegression(C=c, max_iter=1000).fit(support[i].reshape(k * s, f).double().cpu().numpy(), y)
        w[i], b[i] = torch.from_numpy(model.coef_).float(), torch.from_numpy(model.intercept_).float()
    return w, b


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
    """Nearest class mean (squared Euclidean) as a linear head: ``W = 2 mu``, ``b = -|mu|^2``.

    The ProtoNet-style nearest-centroid classifier: ``argmax_k (W x + b)_k`` is the class
    whose mean is closest to ``x``.

    Args:
        feats: ``(K, S, F)`` image features grouped by class, or a batch ``(..., K, S, F)``.

    Returns:
        ``W (..., K, F)``, ``b (..., K)`` in float32.

    Raises:
        ValueError: ``feats`` has fewer than three dimensions.

    Examples:
        >>> import torch
        >>> w, b = prototype_head(torch.tensor([[[0.0, 0.0]], [[2.0, 0.0]]]))  # 2 classes, 1 image each
        >>> (torch.tensor([[1.5, 0.0]]) @ w.T + b).argmax(1)
        tensor([1])
    """
    if feats.dim() < 3:
        raise ValueError(f"prototype_head: expected features (..., K, S, F), got {tuple(feats.shape)}")
    mu = feats.mean(-2).float()  # (..., K, F)
    return 2 * mu, -mu.pow(2).sum(-1)
