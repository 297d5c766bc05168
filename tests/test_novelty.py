"""Novelty metrics and memorization baselines."""

import pytest
import torch
from torch import nn

from paramgen.novelty import (
    checkpoint_mean,
    elementwise_gaussian,
    matched_sigma,
    nearest_l2,
    noisy_checkpoints,
    tensor_scale,
    wrong_prediction_iou,
)
from paramgen.spec import ParamSpec


def test_nearest_l2_against_brute_force():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, generator=g), torch.randn(11, 5, generator=g)
    d, i = nearest_l2(a, b, batch_size=3)
    brute = ((a[:, None] - b[None]) ** 2).sum(-1).sqrt()
    assert torch.allclose(d, brute.min(1).values, atol=1e-5) and torch.equal(i, brute.argmin(1))
    with pytest.raises(ValueError):
        nearest_l2(a, torch.randn(3, 4))


def test_wrong_prediction_iou():
    labels = torch.tensor([0, 1, 2, 0])
    ref = torch.tensor([[1, 1, 2, 0], [0, 0, 0, 0]])  # wrong at {0} and {1, 2}
    gen = torch.tensor([[1, 1, 2, 0], [0, 0, 2, 0], [0, 1, 2, 0], [2, 0, 0, 1]])
    iou = wrong_prediction_iou(gen, ref, labels)
    # {0} vs {0}: 1; {1} vs {1,2}: 1/2; no errors vs erring models: 0; {0,1,2,3} vs {1,2}: 2/4
    assert iou.tolist() == [1.0, 0.5, 0.0, 0.5]
    perfect = torch.tensor([[0, 1, 2, 0]])
    assert wrong_prediction_iou(perfect, perfect, labels).tolist() == [1.0]


def test_baselines_shapes_and_statistics():
    g = torch.Generator().manual_seed(0)
    zoo = torch.randn(40, 30, generator=g) * torch.linspace(0.1, 3, 30) + 2
    mean = checkpoint_mean(zoo, 5, k=16, generator=g)
    assert mean.shape == (5, 30) and (mean - zoo.mean(0)).abs().mean() < zoo.std(0).mean()
    gauss = elementwise_gaussian(zoo, 4000, generator=g)
    assert torch.allclose(gauss.mean(0), zoo.mean(0), atol=0.15) and torch.allclose(gauss.std(0), zoo.std(0), rtol=0.1)
    with pytest.raises(ValueError, match="k=16"):
        checkpoint_mean(zoo[:10], 2, generator=g)


def test_tensor_scale_is_per_tensor_std():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    spec = ParamSpec.from_module(net)
    flat = torch.randn(6, spec.numel)
    flat[:, :12] *= 10  # first weight matrix ten times larger
    s = tensor_scale(spec, flat)
    assert s.shape == (spec.numel,)
    assert torch.allclose(s[:12], flat[:, :12].std(unbiased=False).expand(12), rtol=1e-5)
    assert s[:12].mean() > 5 * s[12:].mean()


def test_matched_sigma_hits_target_distance():
    g = torch.Generator().manual_seed(1)
    zoo = torch.randn(50, 40, generator=g)
    sigma = matched_sigma(zoo, 1.5, scale=1.0, generator=torch.Generator().manual_seed(2))
    noisy, _ = noisy_checkpoints(zoo, 200, sigma=sigma, scale=1.0, generator=torch.Generator().manual_seed(3))
    median = nearest_l2(noisy, zoo)[0].median()
    assert abs(float(median) - 1.5) < 0.15
