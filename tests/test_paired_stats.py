"""Paired statistics of benchmarks.common: two methods on the same items and seeds."""

import math

import numpy as np
import pytest
import torch

from benchmarks.common import clustered_bootstrap, mcnemar, mean_ci, paired_bootstrap, paired_seed_ci


@pytest.fixture
def scipy_stats():
    """scipy.stats (the dev extra has it): the reference the checks against scipy compare with."""
    return pytest.importorskip("scipy.stats")


def correctness(n: int, p: float, seed: int) -> torch.Tensor:
    return (torch.rand(n, generator=torch.Generator().manual_seed(seed)) < p).long()


def test_paired_bootstrap_matches_scipy_and_the_normal_interval(scipy_stats):
    a, b = correctness(600, 0.8, 0), correctness(600, 0.7, 1)
    d, lo, hi = paired_bootstrap(a, b, n_boot=4000, seed=1)
    diff = (a - b).double().numpy()
    assert d == pytest.approx(diff.mean(), abs=1e-15)
    ref = scipy_stats.bootstrap((diff,), np.mean, n_resamples=4000, method="percentile", random_state=np.random.default_rng(0)).confidence_interval
    se = diff.std(ddof=1) / math.sqrt(len(diff))
    width = hi - lo
    assert lo == pytest.approx(ref.low, abs=0.1 * width) and hi == pytest.approx(ref.high, abs=0.1 * width)
    assert width == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert paired_bootstrap(a, b, n_boot=4000, seed=1) == (d, lo, hi)  # the seed fixes the draws
    assert paired_bootstrap(a, b, n_boot=4000, seed=2) != (d, lo, hi)


def test_paired_bootstrap_pairs_items():
    """Two methods with the same per-item noise: the paired interval is tight where separate ones overlap."""
    g = torch.Generator().manual_seed(0)
    common = torch.randn(300, generator=g)
    a, b = common + 0.1, common + 0.01 * torch.randn(300, generator=g)
    d, lo, hi = paired_bootstrap(a, b, n_boot=1000)
    assert 0.09 < lo < d < hi < 0.11
    assert paired_bootstrap([0.5] * 5, [0.25] * 5, n_boot=50) == (0.25, 0.25, 0.25)  # no spread, no width


def test_paired_inputs_are_checked():
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap([1.0, float("nan")], [1.0, 0.0])
    with pytest.raises(ValueError, match="no values"):
        paired_bootstrap([], [])
    with pytest.raises(ValueError, match=r"\(N,\)"):
        paired_bootstrap([[1, 0]], [[1, 0]])
    with pytest.raises(ValueError, match="n_boot"):
        paired_bootstrap([1], [0], n_boot=0)
    with pytest.raises(ValueError, match=r"\(K, N\)"):
        clustered_bootstrap([1, 0], [1, 0])
    with pytest.raises(ValueError, match="0/1"):
        mcnemar([1, 2], [1, 0])
    with pytest.raises(ValueError, match="same items"):
        mcnemar([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="3 values, b 2"):
        paired_seed_ci([0.1, 0.2, 0.3], [0.1, 0.2])


@pytest.mark.parametrize(("b", "c"), [(0, 0), (6, 0), (3, 3), (10, 4), (4, 10), (37, 55), (700, 650)])
def test_mcnemar_is_the_exact_binomial_test(b, c, scipy_stats):
    # b items A right / B wrong, c the reverse, plus concordant items that do not count
    a = [1] * b + [0] * c + [1] * 5 + [0] * 3
    bb = [0] * b + [1] * c + [1] * 5 + [0] * 3
    out = mcnemar(torch.tensor(a), np.array(bb, dtype=bool))
    assert (out["b"], out["c"]) == (b, c)
    expected = 1.0 if b + c == 0 else scipy_stats.binomtest(b, b + c, 0.5).pvalue
    assert out["p"] == pytest.approx(expected, rel=1e-9)


def test_mcnemar_handles_many_discordant_items(scipy_stats):
    out = mcnemar([1] * 2600 + [0] * 2400, [0] * 2600 + [1] * 2400)  # 2**5000 overflows a float
    assert out["p"] == pytest.approx(scipy_stats.binomtest(2600, 5000, 0.5).pvalue, rel=1e-6)


def test_paired_seed_ci_is_mean_ci_of_the_differences(scipy_stats):
    a, b = [0.85, 0.86, 0.84, 0.88], [0.84, 0.84, 0.83, 0.85]
    assert paired_seed_ci(a, b) == mean_ci([x - y for x, y in zip(a, b, strict=True)])
    diffs = np.subtract(a, b)
    lo, hi = scipy_stats.t.interval(0.95, len(diffs) - 1, loc=diffs.mean(), scale=scipy_stats.sem(diffs))
    mean, ci_lo, ci_hi = paired_seed_ci(a, b)
    assert (mean, ci_lo, ci_hi) == pytest.approx((diffs.mean(), lo, hi), abs=1e-12)
    assert paired_seed_ci([0.9], [0.8]) == pytest.approx((0.1, 0.1, 0.1))


def test_clustered_bootstrap_with_one_seed_is_paired_bootstrap():
    a, b = correctness(200, 0.8, 3), correctness(200, 0.75, 4)
    single = clustered_bootstrap(a[None], b[None], n_boot=700, seed=5)
    assert single == pytest.approx(paired_bootstrap(a, b, n_boot=700, seed=5), abs=1e-12)


def test_clustered_bootstrap_widens_with_the_variation_between_seeds():
    g = torch.Generator().manual_seed(0)
    k, n = 4, 400
    item = torch.randn(n, generator=g)
    seed_effect = torch.tensor([0.3, -0.2, 0.25, -0.3])[:, None]  # whole-pipeline runs differ
    a = item + 0.05 + seed_effect + 0.05 * torch.randn(k, n, generator=g)
    b = item + 0.05 * torch.randn(k, n, generator=g)
    d, lo, hi = clustered_bootstrap(a, b, n_boot=1000)
    assert d == pytest.approx(float((a.double() - b.double()).mean()), abs=1e-12)
    pooled = paired_bootstrap((a - b).mean(0), torch.zeros(n), n_boot=1000)  # items only: blind to the seeds
    assert hi - lo > 5 * (pooled[2] - pooled[1])
    # the seeds' spread alone: resampling 4 seeds gives roughly their mean's interval
    seed_means = (a - b).mean(1)
    assert hi - lo == pytest.approx(2 * 1.96 * float(seed_means.std(unbiased=False)) / math.sqrt(k), rel=0.35)
    assert lo < d < hi
