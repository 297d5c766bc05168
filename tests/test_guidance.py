"""Loss guidance at sampling time (paramgen.guidance): exactness at scale 0, effect, dtypes, errors."""

from __future__ import annotations

import functools

import pytest
import torch

import paramgen
from paramgen import Generator
from paramgen.anchors import PrototypeAnchor
from paramgen.conditioners.ordered import OrderedSetConditioner
from paramgen.guidance import Guidance, LatentGuidance, SupportCrossEntropy, guide_eps
from paramgen.heads import head_spec
from paramgen.pipelines import d2nwg
from paramgen.priors import DiffusionPrior, KDEPrior
from paramgen.tokenizers import IdentityTokenizer
from paramgen.vectorize import ModelVectorizer

SPEC = head_spec(4, 3)


def _support(seed: int, b: int, shots: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, shots, 4, generator=g) for _ in range(b)]


@pytest.fixture(scope="module")
def fitted() -> Generator:
    """A tiny anchored head generator (VAE + latent DDPM, 50 timesteps), fitted a few steps."""
    cond = functools.partial(OrderedSetConditioner, feature_dim=4, num_classes=3, per_class=4, hidden=8)
    gen = d2nwg(SPEC, condition=cond, latent_length=8, hidden_channels=8, base_channels=8, timesteps=50)
    gen = gen.with_anchor(PrototypeAnchor(kind="prototype_head", scale=0.5))
    conds = _support(0, 16)
    zoo = torch.randn(16, SPEC.numel, generator=torch.Generator().manual_seed(1))
    paramgen.fit(gen, zoo, conds, tokenizer_steps=5, prior_steps=5, progress=False, generator=torch.Generator().manual_seed(2))
    return gen


def _draw(gen: Generator, sup: list[torch.Tensor], guidance: Guidance | None = None, seed: int = 0) -> torch.Tensor:
    out = gen.sample_flat(sup, 3, generator=torch.Generator().manual_seed(seed), steps=10, guidance=guidance)
    assert isinstance(out, torch.Tensor)
    return out


def _support_ce(flat: torch.Tensor, sup: list[torch.Tensor], n: int = 3) -> torch.Tensor:
    return SupportCrossEntropy()(SPEC.unflatten_stacked(flat), [s for s in sup for _ in range(n)])


def test_scale_zero_is_unguided_sampling_bit_for_bit(fitted):
    sup = _support(5, 4)
    # max_grad_norm too: the clipped gradient times 0 still leaves the chain as it is.
    for guidance in (Guidance(SupportCrossEntropy(), scale=0.0), Guidance(SupportCrossEntropy(), scale=0.0, max_grad_norm=1e-3)):
        assert torch.equal(_draw(fitted, sup), _draw(fitted, sup, guidance))


def test_prior_scale_zero_is_bit_for_bit_also_with_eta_and_cfg():
    prior = DiffusionPrior(shape=(2, 6), cond_dim=3, timesteps=20, base_channels=8, channel_mults=(1,), cond_dropout=0.1)
    cond = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    off = LatentGuidance(lambda x0: x0.pow(2).flatten(1).sum(1), scale=0.0)
    for kw in ({"eta": 0.5}, {"guidance_scale": 2.0}):
        free = prior.sample(4, cond, generator=torch.Generator().manual_seed(1), steps=7, **kw)
        same = prior.sample(4, cond, generator=torch.Generator().manual_seed(1), steps=7, guidance=off, **kw)
        assert torch.equal(free, same)


def test_a_positive_scale_lowers_the_support_loss_of_the_samples(fitted):
    sup = _support(7, 4)
    free = _support_ce(_draw(fitted, sup), sup)  # (12,)
    guided = _support_ce(_draw(fitted, sup, Guidance(SupportCrossEntropy(), scale=3e4)), sup)
    stronger = _support_ce(_draw(fitted, sup, Guidance(SupportCrossEntropy(), scale=1e5)), sup)
    assert bool((guided < free).all()), (free, guided)
    assert float(stronger.mean()) < float(guided.mean()) < float(free.mean())


def test_guidance_uses_only_each_samples_own_condition(fitted):
    """Changing one condition's support set changes only the samples drawn for it."""
    sup = _support(8, 3)
    other = [sup[0], sup[1], _support(9, 1)[0]]
    g = Guidance(SupportCrossEntropy(), scale=3e4)
    a, b = _draw(fitted, sup, g), _draw(fitted, other, g)
    assert torch.equal(a[:6], b[:6]) and not torch.equal(a[6:], b[6:])


def test_clipping_bounds_the_step_and_the_caller_owns_randomness(fitted):
    x, eps = torch.randn(2, 1, 3), torch.randn(2, 1, 3)
    abar = torch.full((2, 1, 1), 0.5)
    v = torch.tensor([[[3.0, 4.0, 0.0]], [[0.3, 0.4, 0.0]]])  # gradient norms 5 and 0.5
    linear = lambda x0: (x0 * v).flatten(1).sum(1)  # noqa: E731  # gradient v
    moved = guide_eps(LatentGuidance(linear, scale=2.0, max_grad_norm=1.0), eps, x, abar) - eps
    coef = (0.5 / 0.5) ** 0.5
    torch.testing.assert_close(moved, coef * 2.0 * torch.stack([v[0] / 5.0, v[1]]))
    # Sampling with guidance draws nothing beyond the unguided draws, and leaves no .grad.
    sup = _support(10, 2)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    fitted.sample_flat(sup, 2, generator=g1, steps=5)
    fitted.sample_flat(sup, 2, generator=g2, steps=5, guidance=Guidance(SupportCrossEntropy(), scale=10.0))
    assert torch.equal(g1.get_state(), g2.get_state())
    assert all(p.grad is None for part in fitted.components.values() if isinstance(part, torch.nn.Module) for p in part.parameters())


def test_float64_generator_guides_in_float64(fitted):
    gen = fitted.to(dtype=torch.float64)
    try:
        sup = [s.double() for s in _support(11, 2)]
        free = _draw(gen, sup)
        guided = _draw(gen, sup, Guidance(SupportCrossEntropy(), scale=3e4))
        assert guided.dtype == free.dtype == torch.float32  # the spec's dtype, as unguided
        assert bool(torch.isfinite(guided).all()) and not torch.equal(free, guided)
        seen = []
        loss = SupportCrossEntropy()

        def spy(weights, conds):
            seen.append((weights["weight"].dtype, conds[0].dtype))
            return loss(weights, conds)

        _draw(gen, sup, Guidance(spy, scale=1.0))
        assert seen and all(d == (torch.float32, torch.float64) for d in seen)  # decoded in the spec's dtype; conditions as given
    finally:
        fitted.to(dtype=torch.float32)


def test_support_cross_entropy_moves_support_to_the_weights_and_uses_class_order():
    w = torch.eye(3, dtype=torch.float64)[None] * 4  # (1, K, F): head k scores feature k
    sup = torch.eye(3)[:, None, :]  # class k's image is e_k, float32
    loss = SupportCrossEntropy()
    right = loss({"weight": w, "bias": torch.zeros(1, 3, dtype=torch.float64)}, [sup])
    swapped = loss({"weight": w, "bias": torch.zeros(1, 3, dtype=torch.float64)}, [sup[[1, 0, 2]]])
    assert right.dtype == torch.float64 and float(right) < float(swapped)
    # Support sets of several sizes in one batch.
    two = loss({"weight": w.expand(2, -1, -1), "bias": torch.zeros(2, 3, dtype=torch.float64)}, [sup, sup.expand(3, 2, 3)])
    torch.testing.assert_close(two, right.expand(2))


def test_errors(fitted):
    sup = _support(12, 1)
    # Not a diffusion prior.
    kde = Generator(vectorizer=ModelVectorizer(SPEC), tokenizer=IdentityTokenizer(rows=1, width=SPEC.numel), prior=KDEPrior())
    kde.fitted = True
    with pytest.raises(TypeError, match="diffusion prior"):
        kde.sample_flat(None, 1, guidance=Guidance(SupportCrossEntropy()))
    # Not DDIM.
    with pytest.raises(ValueError, match="DDIM sampler only"):
        fitted.sample_flat(sup, 1, sampler="ddpm", guidance=Guidance(SupportCrossEntropy()))
    with pytest.raises(TypeError, match="paramgen.guidance.Guidance"):
        fitted.sample_flat(sup, 1, guidance=SupportCrossEntropy())
    with pytest.raises(TypeError, match="LatentGuidance"):
        fitted.prior.sample(1, torch.zeros(1, fitted.conditioner.dim), guidance=Guidance(SupportCrossEntropy()))
    with pytest.raises(ValueError, match="one value per sample"):
        fitted.sample_flat(sup, 2, steps=3, guidance=Guidance(lambda w, c: w["weight"].sum()))
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        fitted.sample_flat(sup, 1, steps=3, guidance=Guidance(lambda w, c: w["weight"].sum((1, 2)) * float("nan")))
    with pytest.raises(ValueError, match="scale must be"):
        Guidance(SupportCrossEntropy(), scale=float("inf"))
    with pytest.raises(ValueError, match="max_grad_norm"):
        Guidance(SupportCrossEntropy(), max_grad_norm=0.0)
    with pytest.raises(ValueError, match=r"support set \(K=3, S>=1, F=4\)"):
        SupportCrossEntropy()({"weight": torch.zeros(1, 3, 4), "bias": torch.zeros(1, 3)}, [torch.randn(2, 1, 4)])
    with pytest.raises(TypeError, match="by name"):
        fitted.sample_flat(sup, 1, steps=2, guidance=Guidance(SupportCrossEntropy(), inputs="flat"))


def test_guided_harness_rows_pair_with_the_unguided_samples_of_fewshot(fitted):
    """`benchmarks.fewshot_tuning._add_guided`: its scale-0 samples are those of `benchmarks.fewshot`'s
    own sampling (checked inside), and each scale gets accuracy, paired-difference and CE rows."""
    from benchmarks import fewshot
    from benchmarks.common import Results
    from benchmarks.fewshot_tuning import _add_guided
    from paramgen.heads import head_accuracy

    g = torch.Generator().manual_seed(13)
    sup = torch.stack(_support(14, 3))  # (E, K, S, F)
    q, qy = torch.randn(3, 6, 4, generator=g), torch.arange(3).repeat(2).expand(3, -1)
    out = fewshot.generated_method(fitted, sup, q, qy, 2, generator=torch.Generator().manual_seed(5))
    accs = {"generated (1 sample)": out["sample_acc"], "generated (best of 2 by support)": out["acc"],
            "generated (mean of 2)": head_accuracy(out["all_w"].mean(1), out["all_b"].mean(1), q, qy),
            "nearest centroid": torch.full((3,), 0.5), "logistic regression C=10": torch.full((3,), 0.5)}  # fmt: skip
    res = Results("t", config={})
    res.items["v"] = {"val 5-way 1-shot": {}}
    lines = _add_guided(res, "v", 1, {"support": sup, "query": q, "query_y": qy}, fitted, 2, [3e4], accs, seed=5)
    assert len(lines) == 1 and "support CE" in lines[0]
    assert {(r["metric"], r.get("guidance_scale")) for r in res.rows} == {("support_ce", 0.0), ("support_ce", 3e4), ("acc", 3e4), ("acc_diff", 3e4), ("acc_diff", 0.0)}
    minus = {r["method"]: r["value"] for r in res.rows if r["metric"] == "acc_diff"}
    assert minus["generated (best of n by support) - nearest centroid"] == pytest.approx(float(out["acc"].mean()) - 0.5)
    assert len(res.items["v"]["val 5-way 1-shot"]["generated (best of n by support), guidance 30000"]) == 3
    with pytest.raises(AssertionError, match="scale 0 changed"):  # unguided values from other samples are refused
        _add_guided(res, "v", 1, {"support": sup, "query": q, "query_y": qy}, fitted, 2, [3e4], {k: 1 - v for k, v in accs.items()}, seed=5)


@pytest.mark.slow
def test_fewshot_tuning_guided_variant_writes_paired_rows(tmp_path, monkeypatch):
    """The harness's guided variant: scale-0 samples equal the unguided ones (checked inside), rows per scale."""
    import json

    from benchmarks import fewshot, fewshot_tuning
    from tests.benchmarks.test_fewshot import TINY

    monkeypatch.setitem(fewshot.SIZES, "quick", {**fewshot.SIZES["quick"], **TINY})
    monkeypatch.setitem(fewshot_tuning.SIZES, "quick", {"variants": ["residual + support guidance"], "episodes": 3, "overrides": {}})
    assert fewshot_tuning.main(["--quick", "--no-mlflow", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    diffs = [r for r in data["rows"] if r["metric"] == "acc_diff"]
    scales = fewshot_tuning.GUIDANCE_SCALES
    assert {r["guidance_scale"] for r in diffs} == {0.0, *scales} and len(diffs) == 2 * (2 + 5 * len(scales))  # per shot: unguided - 2 baselines; per scale 3 + 2
    ce = [r for r in data["rows"] if r["metric"] == "support_ce"]
    assert {r["guidance_scale"] for r in ce} == {0.0, *fewshot_tuning.GUIDANCE_SCALES}
    items = data["items"]["residual + support guidance"]["val 5-way 1-shot"]
    assert len(items["generated (best of n by support), guidance 10"]) == 3 and len(items["support_ce, guidance 0"]) == 3


def test_combine_seeds_pairs_seeds_and_episodes():
    from benchmarks.fewshot_tuning import combine_seeds

    def run(seed: int, shift: float) -> dict:
        base = {"nearest centroid": [0.8, 0.6], "logistic regression C=10": [0.7, 0.7], "generated (1 sample)": [0.5, 0.5],
                "generated (best of n by support)": [0.6, 0.6], "generated (mean of n)": [0.5, 0.7]}  # fmt: skip
        guided = {f"{k}, guidance 10": [v + shift for v in vals] for k, vals in base.items() if k.startswith("generated")}
        return {"config": {"seed": seed}, "items": {"residual + support guidance": {"val 5-way 1-shot": {**base, **guided}}}}

    rows = {r["method"]: r for r in combine_seeds([run(0, 0.1), run(1, 0.3)], boot=200)}
    best = rows["generated (best of n by support), guidance 10 - generated (best of n by support)"]
    assert best["value"] == pytest.approx(0.2) and best["seeds"] == 2 and best["n"] == 4
    assert rows["generated (best of n by support) - nearest centroid"]["value"] == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="2 or more seeds"):
        combine_seeds([run(0, 0.1)])
