"""Functional novelty: disagreement between models' predictions (issue 20's novelty_fn and diversity_fn)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paramgen.novelty import (
    disagreement,
    functional_diversity,
    functional_novelty,
    median_pairwise_disagreement,
    nearest_error_iou,
    pairwise_disagreement,
    wrong_prediction_iou,
)


def test_disagreement_counts_differing_items():
    a = torch.tensor([0, 1, 2, 2, 1])
    assert disagreement(a, a) == 0.0
    assert disagreement(a, torch.tensor([0, 1, 2, 0, 0])) == pytest.approx(2 / 5)
    assert disagreement(a, torch.tensor([1, 2, 0, 0, 0])) == 1.0
    with pytest.raises(ValueError, match="same items"):
        disagreement(a, a[:4])
    with pytest.raises(ValueError, match="integer class ids"):
        disagreement(a.float(), a)  # scores or logits, not predictions
    with pytest.raises(ValueError, match=r"\(N,\)"):
        disagreement(a[None], a[None])


def test_pairwise_disagreement_by_hand():
    preds = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]])
    d = pairwise_disagreement(preds)
    expected = torch.tensor([[0, 2, 4, 3], [2, 0, 2, 1], [4, 2, 0, 1], [3, 1, 1, 0]], dtype=torch.float64) / 4
    assert d.dtype == torch.float64 and torch.equal(d, expected)
    # 6 pairs: 1/4, 1/4, 2/4, 2/4, 3/4, 4/4 -> the average of the middle two
    assert median_pairwise_disagreement(preds) == pytest.approx(0.5)
    assert median_pairwise_disagreement(preds[:3]) == pytest.approx(0.5)  # 2/4, 4/4, 2/4
    assert median_pairwise_disagreement(preds[[0, 1, 3]]) == pytest.approx(0.5)  # 2/4, 3/4, 1/4
    with pytest.raises(ValueError, match="at least 2"):
        median_pairwise_disagreement(preds[:1])


@settings(max_examples=25)
@given(st.integers(2, 5), st.integers(1, 12), st.integers(2, 4), st.integers(0, 2**31 - 1))
def test_pairwise_entries_are_disagreements(m, n, classes, seed):
    preds = torch.randint(0, classes, (m, n), generator=torch.Generator().manual_seed(seed))
    d = pairwise_disagreement(preds)
    assert torch.equal(d, d.T) and torch.equal(d.diagonal(), torch.zeros(m, dtype=torch.float64))
    for i in range(m):
        for j in range(m):
            assert d[i, j].item() == disagreement(preds[i], preds[j])


def test_functional_novelty_default_scale_and_nearest():
    ref = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]])  # pairwise 2/4, 4/4, 2/4: median 1/2
    samples = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1], [1, 1, 0, 1], [1, 0, 1, 0]])
    values, nearest = functional_novelty(samples, ref)
    # nearest disagreements 0, 1/4 (row 0 and 1 tie: the first), 1/4 (row 2), 2/4 (first of three ties)
    assert nearest.tolist() == [0, 0, 2, 0]
    assert values.dtype == torch.float64 and values.tolist() == [0.0, 0.5, 0.5, 1.0]
    # a copy of a training checkpoint is not new
    assert functional_novelty(ref, ref)[0].tolist() == [0.0, 0.0, 0.0]
    explicit, _ = functional_novelty(samples, ref, scale=0.25)
    assert explicit.tolist() == [0.0, 1.0, 1.0, 2.0]


def test_functional_novelty_refuses_what_it_cannot_scale():
    ref = torch.tensor([[0, 1, 1]])
    with pytest.raises(ValueError, match="pass scale="):
        functional_novelty(ref, ref)
    assert functional_novelty(torch.tensor([[0, 1, 0]]), ref, scale=1 / 3)[0].tolist() == [pytest.approx(1.0)]
    with pytest.raises(ValueError, match="predict alike"):
        functional_novelty(ref, torch.cat([ref, ref]))
    with pytest.raises(ValueError, match="same items"):
        functional_novelty(torch.tensor([[0, 1]]), torch.tensor([[0, 1, 1], [1, 1, 1]]))
    with pytest.raises(ValueError, match="positive"):
        functional_novelty(ref, ref, scale=0.0)
    with pytest.raises(ValueError, match=r"\(M, N\)"):
        functional_novelty(torch.tensor([0, 1, 1]), ref, scale=1.0)


def test_functional_diversity_is_the_samples_median_over_the_scale():
    samples = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]])
    assert functional_diversity(samples, scale=0.5) == pytest.approx(1.0)
    assert functional_diversity(samples, scale=0.25) == pytest.approx(2.0)
    assert functional_diversity(torch.stack([samples[0]] * 3), scale=0.5) == 0.0  # copies of one model
    with pytest.raises(ValueError, match="at least 2 samples"):
        functional_diversity(samples[:1], scale=0.5)
    with pytest.raises(ValueError, match="positive"):
        functional_diversity(samples, scale=float("nan"))


def test_nearest_error_iou_compares_with_the_given_row():
    labels = torch.tensor([0, 0, 0, 0])
    ref = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1]])  # errors {0, 1} and {3}
    preds = torch.tensor([[1, 0, 0, 1], [1, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]])  # {0, 3}, {0, 3}, {}, {}
    iou = nearest_error_iou(preds, ref, labels, torch.tensor([0, 1, 0, 1]))
    assert iou.tolist() == [pytest.approx(1 / 3), 0.5, 0.0, 0.0]
    perfect = torch.zeros(1, 4, dtype=torch.long)
    assert nearest_error_iou(perfect, perfect, labels, torch.tensor([0])).tolist() == [1.0]
    # wrong_prediction_iou is the largest over all rows; with the argmax row they agree
    assert wrong_prediction_iou(preds[:1], ref, labels).tolist() == [0.5]
    with pytest.raises(ValueError, match=r"in \[0, 2\)"):
        nearest_error_iou(preds, ref, labels, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"\(4,\) integer"):
        nearest_error_iou(preds, ref, labels, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="same items"):
        nearest_error_iou(preds, ref, labels[:3], torch.tensor([0, 1, 0, 1]))
