"""paramgen.heads: linear heads fitted, scored and built from class means, many at once."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from paramgen.heads import (
    fit_heads,
    head_accuracy,
    head_cross_entropy,
    head_logits,
    head_spec,
    logistic_regression_heads,
    prototype_head,
    train_linear_head,
)
from paramgen.spec import ParamSpec


def blobs(heads: int, per_class: int, k: int = 3, f: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``heads`` separable tasks: class ``c`` centred on ``3 e_c`` in a random rotation per task."""
    g = torch.Generator().manual_seed(seed)
    xs = []
    for _ in range(heads):
        rot = torch.linalg.qr(torch.randn(f, f, generator=g))[0]
        xs.append(torch.cat([(torch.randn(per_class, f, generator=g) * 0.3 + 3 * torch.eye(f)[c]) @ rot for c in range(k)]))
    return torch.stack(xs), torch.arange(k).repeat_interleave(per_class).expand(heads, -1).contiguous()


def test_head_spec_is_the_layout_of_nn_linear():
    assert head_spec(7, 3) == ParamSpec.from_module(torch.nn.Linear(7, 3))
    with pytest.raises(ValueError, match="num_classes >= 2"):
        head_spec(7, 1)


def test_per_head_scores_match_one_head_at_a_time():
    g = torch.Generator().manual_seed(1)
    w, b, x = torch.randn(4, 3, 5, generator=g), torch.randn(4, 3, generator=g), torch.randn(4, 6, 5, generator=g)
    y = torch.randint(0, 3, (4, 6), generator=g)
    logits = head_logits(w, b, x)
    for h in range(4):
        assert torch.allclose(logits[h], x[h] @ w[h].T + b[h], atol=1e-6)
        assert head_accuracy(w, b, x, y)[h] == (logits[h].argmax(1) == y[h]).float().mean()
        assert torch.allclose(head_cross_entropy(w, b, x, y)[h], F.cross_entropy(logits[h], y[h]))
    # Inputs shared by every head give the same accuracies as the inputs repeated per head.
    assert torch.equal(head_accuracy(w, b, x[0], y[0]), head_accuracy(w, b, x[0].expand(4, -1, -1), y[0].expand(4, -1)))


def test_fit_heads_fits_each_head_on_its_own_data_only():
    x, y = blobs(3, 10)
    w, b = fit_heads(x, y, 3, steps=100)
    assert w.shape == (3, 3, 4) and b.shape == (3, 3)
    assert head_accuracy(w, b, x, y).eq(1).all()
    # Each head is independent of the others: fitting one alone gives the same head.
    w1, b1 = fit_heads(x[1:2], y[1:2], 3, steps=100)
    assert torch.allclose(w1[0], w[1], atol=1e-5) and torch.allclose(b1[0], b[1], atol=1e-5)
    # The rotations differ, so a head is wrong on the other tasks.
    assert head_accuracy(w[:1].expand(3, -1, -1), b[:1].expand(3, -1), x, y)[1:].lt(1).all()
    w0, b0 = fit_heads(x, y, 3, steps=0, init=(w, b))
    assert torch.equal(w0, w) and torch.equal(b0, b)


def test_fit_heads_and_scores_refuse_bad_input():
    x, y = blobs(2, 4)
    with pytest.raises(ValueError, match=r"labels in 0..1"):
        fit_heads(x, y, 2, steps=1)
    with pytest.raises(ValueError, match="steps >= 0"):
        fit_heads(x, y, 3, steps=-1)
    with pytest.raises(ValueError, match=r"expected x \(H, N, F\) and y \(H, N\)"):
        fit_heads(x[0], y[0], 3, steps=1)
    with pytest.raises(ValueError, match=r"expected init w \(2, 3, 4\)"):
        fit_heads(x, y, 3, steps=1, init=(torch.zeros(2, 3, 5), torch.zeros(2, 3)))
    with pytest.raises(ValueError, match="expected labels of shape"):
        head_accuracy(torch.zeros(2, 3, 4), torch.zeros(2, 3), x, y[:, :3])


def test_prototype_head_is_nearest_centroid_for_one_task_or_a_batch():
    x, y = blobs(2, 5)
    feats = x.view(2, 3, 5, 4)  # (E, K, S, F): grouped by class
    w, b = prototype_head(feats)
    assert w.shape == (2, 3, 4) and b.shape == (2, 3)
    w0, b0 = prototype_head(feats[0])
    assert torch.equal(w0, w[0]) and torch.equal(b0, b[0])
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 7, 4, generator=g) * 3
    nearest = torch.cdist(q, feats.mean(2)).argmin(-1)  # (E, 7)
    assert head_accuracy(w, b, q, nearest).eq(1).all()


def test_logistic_regression_heads_fit_each_support_set():
    pytest.importorskip("sklearn")
    x, y = blobs(2, 6)
    w, b = logistic_regression_heads(x.view(2, 3, 6, 4), c=1.0)
    assert head_accuracy(w, b, x, y).eq(1).all()
    with pytest.raises(ValueError, match=r"\(E, K, S, F\)"):
        logistic_regression_heads(x, c=1.0)


def test_train_linear_head_and_fit_heads_agree_on_separable_data():
    x, y = blobs(1, 10)
    w, b = train_linear_head(x[0], y[0], 3)
    assert head_accuracy(w[None], b[None], x[0], y[0]).item() == 1.0
