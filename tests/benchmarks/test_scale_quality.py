"""The pieces of ``benchmarks.scale``'s quality and steps sections, on tiny synthetic states
(the end-to-end run on a tiny fine-tune zoo is in test_scale_harness.py)."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.common import Results
from benchmarks.scale import Models, block_tensors, compare_states, noise_like, paired_rows, pearson


def _states(seed: int) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    base = {"a": torch.randn(6, 5, generator=g), "b": torch.randn(7, generator=g)}
    refs = [{n: t + 0.1 * torch.randn(t.shape, generator=g) for n, t in base.items()} for _ in range(3)]
    sample = {n: t + 0.02 * torch.randn(t.shape, generator=g) for n, t in refs[2].items()}  # nearest: refs[2]
    return sample, refs, base


@pytest.mark.parametrize("seed", range(5))
def test_noise_row_has_the_generated_samples_norm_and_distance_not_an_inflated_norm(seed):
    sample, refs, _ = _states(seed)
    noise, ref = noise_like(sample, refs, ["a", "b"], generator=torch.Generator().manual_seed(seed))
    assert ref == 2
    for n in ("a", "b"):
        assert float(noise[n].norm()) == pytest.approx(float(sample[n].norm()), rel=1e-5)
        assert float((noise[n] - refs[2][n]).norm()) == pytest.approx(float((sample[n] - refs[2][n]).norm()), rel=1e-4)
        assert not torch.allclose(noise[n], sample[n])  # a new direction, not the sample


def test_noise_norm_matches_where_adding_noise_would_inflate_it_by_sqrt2():
    ref = {"w": torch.zeros(1000, dtype=torch.float64)}
    ref["w"][0] = 1.0
    like = {"w": ref["w"].clone()}
    like["w"][1] = 1.0  # distance 1 from a reference of norm 1: reference + noise has norm sqrt(2)
    noise, _ = noise_like(like, [ref], ["w"], generator=torch.Generator().manual_seed(0))
    assert float(noise["w"].norm()) == pytest.approx(math.sqrt(2.0))  # = the sample's norm
    assert float((noise["w"] - ref["w"]).norm()) == pytest.approx(1.0)
    assert float(noise["w"][0]) == pytest.approx(1.0)  # the component along the reference is kept


def test_compare_states_picks_the_nearest_and_skips_itself():
    sample, refs, base = _states(0)
    c = compare_states(sample, refs, base, ["a", "b"])
    assert c["nearest"] == 2
    dist = math.sqrt(sum(float((sample[n] - refs[2][n]).pow(2).sum()) for n in "ab"))
    r_norm = math.sqrt(sum(float(refs[2][n].pow(2).sum()) for n in "ab"))
    delta = math.sqrt(sum(float((refs[2][n] - base[n]).pow(2).sum()) for n in "ab"))
    assert c["rel_l2"] == pytest.approx(dist / r_norm) and c["rel_l2_delta"] == pytest.approx(dist / delta)
    assert 0.9 < c["corr_delta"] < 1.0 and c["corr"] > c["corr_delta"]
    own = compare_states(refs[2], refs, base, ["a", "b"], skip=2)
    assert own["nearest"] != 2 and own["rel_l2"] > 0
    assert compare_states(refs[2], refs, base, ["a", "b"])["rel_l2"] == 0.0
    with pytest.raises(ValueError, match="no reference"):
        compare_states(sample, refs[:1], base, ["a"], skip=0)


def test_pearson_of_a_constant_side_is_zero_not_nan():
    assert pearson([(torch.full((4,), 2.0), torch.arange(4.0))]) == 0.0
    assert pearson([(torch.arange(4.0), -torch.arange(4.0))]) == pytest.approx(-1.0)


def test_block_tensors_undo_the_chunking():
    from paramgen.chunks import ChunkLayout
    from paramgen.spec import ParamSpec

    state = {"x.weight": torch.randn(5, 3), "x.bias": torch.randn(5), "y.weight": torch.randn(2, 2)}
    layout = ChunkLayout(ParamSpec.from_state_dict(state), 4)
    names = ["x.weight", "x.bias"]
    ids = torch.tensor([c for n in names for c in layout.chunks_of(n)])
    values = torch.full((len(ids), 4), float("nan"), dtype=torch.float64)  # padding must be dropped
    for row, c in enumerate(ids.tolist()):
        info = layout.chunk(c)
        values[row, : info.length] = state[info.name].reshape(-1)[info.offset : info.offset + info.length].double()
    out = block_tensors(layout, ids, values, names)
    assert set(out) == set(names) and all(torch.equal(out[n], state[n]) for n in names)
    with pytest.raises(ValueError, match="not among"):
        block_tensors(layout, ids[:-1], values[:-1], names)


def test_paired_rows_pair_per_seed_and_item_and_test_the_target():
    labels = {"t": torch.tensor([0, 1, 0, 1, 1, 0, 1, 0])}
    models = {(m, "t"): Models() for m in ("a", "same", "wrong", "base")}
    for s in (0, 1, 2):
        models[("a", "t")].add(labels["t"].clone(), s, {})
        models[("same", "t")].add(labels["t"].clone(), s, {})
        models[("wrong", "t")].add(1 - labels["t"], s, {})
    models[("base", "t")].add(labels["t"].clone(), -1, {})  # independent of the pipeline: one row for every seed
    assert models[("base", "t")].per_seed(labels["t"], [0, 1, 2]).shape == (3, 8)
    res = Results("demo", config={})
    paired_rows(res, models, labels, [("a", "same"), ("a", "wrong"), ("a", "base"), ("a", "missing")], [0, 1, 2], n_boot=100, seed=0, target=0.005, target_pairs=[("a", "same"), ("a", "wrong")])
    rows = {(r["method"], r["task"], r["metric"]): r for r in res.rows}
    same = rows[("a - same", "pooled", "acc_diff_seeds_x_items")]
    assert same["value"] == 0.0 and same["within_target"] and same["n"] == 24
    wrong = rows[("a - wrong", "t", "acc_diff_seeds_x_items")]
    assert wrong["value"] == 1.0 and not wrong["within_target"]
    assert rows[("a - base", "t", "acc_diff_seeds")]["n"] == 3 and "within_target" not in rows[("a - base", "t", "acc_diff_seeds")]
    assert not any(r["method"] == "a - missing" for r in res.rows)
