"""The few-shot head generator sees only the support set (benchmarks/fewshot.py).

The conditioner gets the support images' features, never the queries or their labels:
shuffling the query labels or replacing the queries leaves the generated and the chosen
heads unchanged, while a different support set changes them.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.fewshot import (
    WAY,
    fit_generator,
    generated_method,
    head_accuracy,
    nearest_centroid,
    select_by_support,
)

F_DIM = 8


@pytest.fixture(scope="module", params=[False, True], ids=["whole", "anchored"])
def gen(request):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    t = 12
    zoo = {
        "w": torch.randn(t, WAY, F_DIM, generator=g),
        "b": torch.randn(t, WAY, generator=g),
        "conds": [torch.randn(WAY, 1 + i % 2, F_DIM, generator=g) for i in range(t)],
        "task_of_row": list(range(t)),
    }
    size = dict(vae_channels=8, vae_steps=3, align_steps=0, prior_steps=3, residual=request.param)
    out = fit_generator(zoo, F_DIM, size, seed=0)
    assert (out.anchor is not None) == request.param
    return out


def _episodes(seed: int, e: int = 4, shot: int = 2, q: int = 3):
    g = torch.Generator().manual_seed(seed)
    support = torch.randn(e, WAY, shot, F_DIM, generator=g)
    query = torch.randn(e, WAY * q, F_DIM, generator=g)
    query_y = torch.arange(WAY).repeat_interleave(q).expand(e, -1).contiguous()
    return support, query, query_y


def test_generated_head_ignores_queries(gen):
    support, query, query_y = _episodes(0)
    run = lambda s, q, y: generated_method(gen, s, q, y, 3, generator=torch.Generator().manual_seed(7))  # noqa: E731
    ref = run(support, query, query_y)
    shuffled_y = query_y[:, torch.randperm(query_y.shape[1], generator=torch.Generator().manual_seed(1))]
    other_q = torch.randn_like(query) * 5
    for variant in (run(support, query, shuffled_y), run(support, other_q, query_y), run(support, query[:, :4], query_y[:, :4])):
        assert torch.equal(variant["all_w"], ref["all_w"]) and torch.equal(variant["all_b"], ref["all_b"])
        assert torch.equal(variant["index"], ref["index"]) and torch.equal(variant["w"], ref["w"])
    # The query labels are used, for scoring only: shuffling them changes the reported accuracy.
    assert not torch.equal(run(support, query, shuffled_y)["acc"], ref["acc"])
    # The support set is what the heads depend on.
    other = run(support.flip(1), query, query_y)
    assert not torch.allclose(other["all_w"], ref["all_w"])


def test_anchor_is_the_support_sets_prototype_head(gen):
    support, query, query_y = _episodes(2)
    ref = generated_method(gen, support, query, query_y, 2, generator=torch.Generator().manual_seed(7))
    if gen.anchor is None:
        pytest.skip("a whole-head generator has no anchor")
    plain = gen.with_anchor(None)
    res = generated_method(plain, support, query, query_y, 2, generator=torch.Generator().manual_seed(7))
    w, b = nearest_centroid(support)  # (E, K, F): from the support only
    s = gen.anchor.scale
    torch.testing.assert_close(ref["all_w"], res["all_w"] + s * w[:, None])
    torch.testing.assert_close(ref["all_b"], res["all_b"] + s * b[:, None])


def test_selection_uses_support_accuracy():
    # Two candidate heads per episode: the prototype head and its class-rolled copy (all wrong on the support).
    support, _, _ = _episodes(3, e=2, shot=3)
    w, b = nearest_centroid(support)
    cand_w = torch.stack([w.roll(1, 1), w], 1)  # (E, 2, K, F): the good head second
    cand_b = torch.stack([b.roll(1, 1), b], 1)
    _, _, idx = select_by_support(cand_w, cand_b, support)
    assert idx.tolist() == [1, 1]


def test_nearest_centroid_head_is_euclidean():
    support, query, _ = _episodes(4)
    w, b = nearest_centroid(support)
    protos = support.mean(2)  # (E, K, F)
    expected = torch.cdist(query, protos).argmin(-1)  # (E, Q)
    assert head_accuracy(w, b, query, expected).eq(1).all()
