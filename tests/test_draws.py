"""paramgen.draws: several draws of a checkpoint's condition, a fresh one at every fitting step."""

from __future__ import annotations

import pytest
import torch

import paramgen
from paramgen.draws import Draws, draw_table, first_draws, has_draws, pick_draws
from paramgen.pipelines import d2nwg
from paramgen.spec import ParamSpec

SPEC = ParamSpec.from_state_dict({"w": torch.zeros(6, 4), "b": torch.zeros(6)})


def test_draws_hold_alternatives_and_picking_is_seeded_and_uniform():
    a, b = torch.zeros(2), torch.ones(2)
    d = Draws(a, b)
    assert len(d) == 2 and d.first is a and list(d) == [a, b] and d[1] is b
    assert first_draws([d, "x"]) == [a, "x"] and has_draws([d]) and not has_draws(["x"]) and not has_draws(None)
    picks = [pick_draws([d], torch.Generator().manual_seed(s))[0] for s in range(200)]
    ones = sum(int(p.sum()) for p in picks) / 2
    assert 60 < ones < 140  # both draws, about half each
    assert all(torch.equal(pick_draws([d], torch.Generator().manual_seed(7))[0], pick_draws([d], torch.Generator().manual_seed(7))[0]) for _ in range(3))
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    assert pick_draws(["x", "y"], g) == ["x", "y"] and torch.equal(g.get_state(), state)  # no Draws: nothing drawn
    flat, table = draw_table([Draws("p", "q", "r"), "s", Draws("t", "u")])
    assert flat == ["p", "q", "r", "s", "t", "u"] and table.tolist() == [[0, 1, 2], [3, 3, 3], [4, 5, 4]]
    with pytest.raises(ValueError, match="at least one draw"):
        Draws()
    with pytest.raises(ValueError, match="cannot hold Draws"):
        Draws(d)


def _zoo(m: int = 8):
    g = torch.Generator().manual_seed(0)
    flat = torch.randn(m, SPEC.numel, generator=g)
    conds = [torch.randn(3, 2, 5, generator=g) for _ in range(m)]  # (K, S, F) image-set features
    return flat, conds


def _gen():
    return d2nwg(SPEC, condition="dataset", feature_dim=5, seed=0, latent_length=8, hidden_channels=8, base_channels=8)


def _fit(gen, flat, conds, **kw):
    paramgen.fit(gen, flat, conds, tasks=[f"t{i // 2}" for i in range(len(conds))], tokenizer_steps=2, prior_steps=3, generator=torch.Generator().manual_seed(0),
                 progress=False, **kw)  # fmt: skip
    return gen.sample_flat(first_draws(conds[:2]), 2, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("align_steps", [0, 3])
def test_draws_of_one_condition_fit_exactly_like_that_condition(align_steps):
    flat, conds = _zoo()
    plain = _fit(_gen(), flat, conds, align_steps=align_steps)
    copies = _fit(_gen(), flat, [Draws(c, c.clone()) for c in conds], align_steps=align_steps)
    assert torch.equal(plain, copies)  # the draws' own stream leaves batches and noise as they were


@pytest.mark.parametrize("align_steps", [0, 3])
def test_every_step_sees_a_fresh_draw(align_steps, monkeypatch):
    flat, conds = _zoo()
    other = [c + 10.0 for c in conds]
    gen = _gen()
    seen: list[torch.Tensor] = []
    real = gen.prior.loss

    def spy(z, c, **kw):
        seen.append(c.detach().clone())
        return real(z, c, **kw)

    monkeypatch.setattr(gen.prior, "loss", spy)
    paramgen.fit(gen, flat, [Draws(a, b) for a, b in zip(conds, other, strict=True)], tasks=[f"t{i // 2}" for i in range(8)], tokenizer_steps=1,
                 prior_steps=12, align_steps=align_steps, generator=torch.Generator().manual_seed(0), progress=False)  # fmt: skip
    with torch.no_grad():
        va, vb = gen.condition(conds), gen.condition(other)  # (M, Dc) each: the two draws' vectors (conditioner as fitted, at the end)
    rows = torch.cat(seen)
    exact = "donot_use_mm_for_euclid_dist"  # cdist's matmul shortcut is off by ~1e-3 on 96 rows
    da, db = torch.cdist(rows, va, compute_mode=exact).min(1).values, torch.cdist(rows, vb, compute_mode=exact).min(1).values
    if align_steps:  # frozen conditioner: the vectors of each step are exactly one of the two draws' vectors
        hit_a, hit_b = int((da < 1e-5).sum()), int((db < 1e-5).sum())
        assert hit_a > 0 and hit_b > 0 and hit_a + hit_b == len(rows)
    else:  # a conditioner trained with the prior: the raw draws it saw differ by +10, so the vectors fall near one draw or the other
        near_b = db < da
        assert 0 < int(near_b.sum()) < len(rows)


def test_sampling_refuses_draws_and_an_anchor_reads_the_first_draw():
    from paramgen.anchors import PrototypeAnchor
    from paramgen.heads import head_spec

    flat, conds = _zoo()
    gen = _gen()
    _fit(gen, flat, conds)
    with pytest.raises(TypeError, match="Draws are for fitting"):
        gen.sample_flat([Draws(conds[0], conds[1])], 1)
    spec = head_spec(5, 3)
    w = torch.randn(4, spec.numel, generator=torch.Generator().manual_seed(2))
    support = [torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    anchored = d2nwg(spec, condition="dataset", feature_dim=5, seed=0, latent_length=8, hidden_channels=8, base_channels=8).with_anchor(PrototypeAnchor())
    want = anchored.residual_targets(w, support)
    seen = {}
    real = anchored.residual_targets

    def spy(x, c):
        seen["conds"] = c
        return real(x, c)

    anchored.residual_targets = spy  # type: ignore[method-assign]
    paramgen.fit(anchored, w, [Draws(s, s + 1.0) for s in support], tasks=["a", "a", "b", "b"], tokenizer_steps=1, prior_steps=1,
                 generator=torch.Generator().manual_seed(0), progress=False)  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(seen["conds"], support, strict=True))
    assert torch.equal(real(w, seen["conds"]), want)


def test_a_kde_prior_pairs_every_latent_with_every_draw():
    from typing import Any, cast

    from paramgen import Generator
    from paramgen.priors import KDEPrior

    flat, conds = _zoo()
    other = [c + 10.0 for c in conds]
    gen = _gen()
    _fit(gen, flat, conds, align_steps=3)  # the conditioner is frozen after alignment
    kde = Generator(vectorizer=gen.vectorizer, tokenizer=gen.tokenizer, prior=cast(Any, KDEPrior()), conditioner=gen.conditioner, normalizer=gen.normalizer)
    paramgen.fit(kde, flat, [Draws(a, b) for a, b in zip(conds, other, strict=True)], tokenizer_steps=0, generator=torch.Generator().manual_seed(0), progress=False)
    with torch.no_grad():
        want = torch.cat([gen.condition(conds), gen.condition(other)])  # (2M, Dc): both draws of every checkpoint
    groups = kde.prior.conds  # one group per distinct condition vector
    assert groups.shape[0] == 2 * len(conds)
    exact = "donot_use_mm_for_euclid_dist"
    assert float(torch.cdist(want, groups.to(want.dtype), compute_mode=exact).min(1).values.max()) < 1e-5
