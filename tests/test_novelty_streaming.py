"""Streaming metrics and baselines on state dicts equal their in-memory counterparts on flat vectors."""

import pytest
import torch
from fake_device import FAKE, fake_device, tensors_in

from paramgen import _random
from paramgen.io import save_safetensors
from paramgen.novelty import (
    RunningMoments,
    elementwise_gaussian,
    functional_novelty,
    median_pairwise_l2,
    nearest_error_iou,
    nearest_l2,
    nearest_l2_state,
    nearest_l2_states,
    noise_at_distance,
    pairwise_disagreement,
    pairwise_l2_states,
    per_tensor_mean,
)

SHAPES = {"b.weight": (3, 4), "a.bias": (5,), "c": (2, 1, 3)}  # not in sorted order: order is the state's


def zoo(m: int, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(m):
        state = {name: (torch.randn(shape, generator=g, dtype=torch.float64) * (1 + k) + k).to(dtype) for k, (name, shape) in enumerate(SHAPES.items())}
        state["step"] = torch.tensor(100 + i)  # an integer buffer: not a weight
        out.append(state)
    return out


def flat(state) -> torch.Tensor:
    """The in-memory vector: the floating tensors concatenated in sorted name order."""
    return torch.cat([state[n].reshape(-1) for n in sorted(state) if state[n].is_floating_point()]).double()


def unflat(vector: torch.Tensor, like) -> dict[str, torch.Tensor]:
    out, at = {}, 0
    for n in sorted(like):
        if like[n].is_floating_point():
            out[n] = vector[at : at + like[n].numel()].reshape(like[n].shape)
            at += like[n].numel()
    return out


# --------------------------------------------------------------------------- RunningMoments
def test_running_moments_equal_the_stacked_mean_and_std():
    states = zoo(5)
    moments = RunningMoments()
    for s in states:
        moments.update(s)
    stacked = torch.stack([flat(s) for s in states])  # (M, D)
    assert moments.count == 5
    mean, std, std_b = moments.mean(), moments.std(), moments.std(unbiased=False)
    assert list(mean) == list(states[0])  # the first checkpoint's order
    assert torch.allclose(flat(mean), stacked.mean(0), rtol=0, atol=1e-12)
    assert torch.allclose(flat(std), stacked.std(0), rtol=0, atol=1e-12)
    assert torch.allclose(flat(std_b), stacked.std(0, unbiased=False), rtol=0, atol=1e-12)
    assert mean["step"].item() == 100 and std["step"].item() == 0  # kept from the first checkpoint


def test_running_moments_accumulate_in_float64_and_cast_back():
    states = zoo(4, dtype=torch.float32)
    moments = RunningMoments()
    for s in states:
        moments.update(s)
    mean = moments.mean()
    assert mean["c"].dtype == torch.float32 and mean["step"].dtype == torch.int64
    exact = torch.stack([flat(s) for s in states]).mean(0)  # float64 of the float32 values
    # float64 accumulation, rounded to float32 once at the end: within half a float32 ulp (2**-24 relative) of the exact mean
    assert ((flat(mean) - exact).abs() <= exact.abs() * 2**-24 * (1 + 1e-9)).all()


def test_running_moments_sample_draws_like_elementwise_gaussian():
    states = zoo(4)
    moments = RunningMoments()
    for s in states:
        moments.update(s)
    mean, std = moments.mean(), moments.std()
    # The same generator gives the same numbers: the noise is drawn tensor by tensor in the state's order.
    g = torch.Generator().manual_seed(3)
    draw = moments.sample(generator=torch.Generator().manual_seed(3))
    for name, shape in SHAPES.items():
        z = _random.randn(shape, generator=g, dtype=torch.float64)
        assert torch.allclose(draw[name], mean[name] + std[name] * z, rtol=0, atol=1e-12)
    assert draw["step"].item() == 100
    # ... and its distribution is elementwise_gaussian's on the flat vectors.
    stacked = torch.stack([flat(s) for s in states])
    g = torch.Generator().manual_seed(4)
    many = torch.stack([flat(moments.sample(generator=g)) for _ in range(2000)])
    reference = elementwise_gaussian(stacked, 2000, generator=torch.Generator().manual_seed(5)).double()
    assert ((many.mean(0) - stacked.mean(0)).abs() <= 5 * stacked.std(0) / 2000**0.5).all()  # 5 standard errors
    assert torch.allclose(many.std(0), reference.std(0), rtol=0.12)
    # one checkpoint: the std is 0 and the draw is the checkpoint (elementwise_gaussian's convention)
    single = RunningMoments()
    single.update(states[0])
    assert torch.equal(flat(single.sample(generator=g)), flat(states[0]))
    assert torch.equal(elementwise_gaussian(flat(states[0])[None], 1, generator=g)[0], flat(states[0]))


def test_running_moments_refuse_bad_checkpoints_and_stay_unchanged():
    states = zoo(3)
    moments = RunningMoments()
    with pytest.raises(ValueError, match="at least 1"):
        moments.mean()
    moments.update(states[0])
    with pytest.raises(ValueError, match="at least 2"):
        moments.std()
    wrong_shape = dict(states[1], c=torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"'c' has shape \(3, 2\)"):
        moments.update(wrong_shape)
    with pytest.raises(ValueError, match=r"missing \['a.bias'\]"):
        moments.update({k: v for k, v in states[1].items() if k != "a.bias"})
    nan = dict(states[1], **{"a.bias": torch.full((5,), float("nan"), dtype=torch.float64)})
    with pytest.raises(ValueError, match="'a.bias' has NaN"):
        moments.update(nan)
    with pytest.raises(ValueError, match="no floating-point"):
        RunningMoments().update({"step": torch.tensor(1)})
    assert moments.count == 1 and torch.equal(flat(moments.mean()), flat(states[0]))


# --------------------------------------------------------------------------- distances
def test_nearest_l2_states_equal_nearest_l2_on_flat_vectors():
    ckpts, cands = zoo(6, seed=1), zoo(4, seed=2)
    cands[2] = {k: v + 1e-3 if v.is_floating_point() else v for k, v in ckpts[3].items()}  # close to one checkpoint
    d, i = nearest_l2_states(cands, iter(ckpts))  # one pass: a one-shot iterator will do
    a, b = torch.stack([flat(c) for c in cands]), torch.stack([flat(c) for c in ckpts])
    brute = ((a[:, None] - b[None]) ** 2).sum(-1).sqrt()  # (S, M) in float64
    assert d.dtype == torch.float64 and torch.allclose(d, brute.min(1).values, rtol=0, atol=1e-12)
    assert torch.equal(i, nearest_l2(a, b)[1]) and i[2].item() == 3
    one = nearest_l2_state(cands[1], (c for c in ckpts))
    assert one[1] == int(i[1]) and one[0] == pytest.approx(float(d[1]), abs=1e-12)
    with pytest.raises(ValueError, match="empty"):
        nearest_l2_states(cands, [])
    with pytest.raises(ValueError, match="checkpoint 1 does not have the tensors"):
        nearest_l2_states(cands, [ckpts[0], {"x": torch.zeros(1)}])


@pytest.fixture
def four():
    return zoo(4, seed=7)


def expected_pairwise(states) -> torch.Tensor:
    x = torch.stack([flat(s) for s in states])
    return ((x[:, None] - x[None]) ** 2).sum(-1).sqrt()  # (M, M)


def test_pairwise_l2_states_from_a_sequence_of_state_dicts(four):
    d = pairwise_l2_states(four)
    assert d.dtype == torch.float64 and torch.allclose(d, expected_pairwise(four), rtol=0, atol=1e-12)
    pairs = torch.nn.functional.pdist(torch.stack([flat(s) for s in four]))  # the 6 upper entries
    assert median_pairwise_l2(four) == pytest.approx(float(torch.quantile(pairs, 0.5)), abs=1e-12)
    assert median_pairwise_l2(four) == pytest.approx(float(pairs.sort().values[2:4].mean()), abs=1e-12)  # even count: the middle two


def test_pairwise_l2_states_from_loaders_paths_and_a_factory(four, tmp_path):
    expected = expected_pairwise(four)
    loads = []

    def loader(i):
        def load():
            loads.append(i)
            return four[i]

        return load

    assert torch.allclose(pairwise_l2_states([loader(i) for i in range(4)]), expected, rtol=0, atol=1e-12)
    assert len(loads) == 4 + 3 + 2  # pass p loads checkpoints p..M-1, never two passes' worth at once
    paths = []
    for i, s in enumerate(four):
        paths.append(tmp_path / f"{i}.safetensors")
        save_safetensors(paths[-1], s)
    assert torch.allclose(pairwise_l2_states(paths), expected, rtol=0, atol=1e-12)
    assert torch.allclose(pairwise_l2_states([str(p) for p in paths]), expected, rtol=0, atol=1e-12)
    passes = []

    def factory():
        passes.append(1)
        return (s for s in four)

    assert torch.allclose(pairwise_l2_states(factory), expected, rtol=0, atol=1e-12)
    assert len(passes) == 3  # M - 1


def test_pairwise_l2_states_refuses_what_it_cannot_read_twice(four):
    with pytest.raises(TypeError, match="fresh iterable"):
        pairwise_l2_states(iter(four))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fresh iterable"):
        pairwise_l2_states(four[0])  # type: ignore[arg-type]
    once = iter(four)
    with pytest.raises(ValueError, match="yielded 0 state dicts on pass 1"):
        pairwise_l2_states(lambda: once)  # the same iterator each call
    with pytest.raises(ValueError, match="at least 2"):
        pairwise_l2_states(four[:1])
    with pytest.raises(ValueError, match="at least 2"):
        pairwise_l2_states(lambda: iter(four[:1]))
    with pytest.raises(ValueError, match="checkpoint 2: tensor 'c' has shape"):
        pairwise_l2_states([four[0], four[1], dict(four[2], c=torch.zeros(6))])
    bad = dict(four[1], c=torch.full((2, 1, 3), float("inf"), dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN or infinite"):
        pairwise_l2_states([four[0], bad])


# --------------------------------------------------------------------------- noise and per-tensor mean
def test_noise_at_distance_is_exactly_that_far_along_an_isotropic_direction(four):
    state = four[0]
    noisy = noise_at_distance(state, 2.5, generator=torch.Generator().manual_seed(1))
    assert (flat(noisy) - flat(state)).norm().item() == pytest.approx(2.5, abs=1e-12)
    assert noisy["step"].item() == state["step"].item() and list(noisy) == list(state)
    # the direction is the generator's draws, tensor by tensor in the state's order, normalized over all
    g = torch.Generator().manual_seed(1)
    z = {name: _random.randn(shape, generator=g, dtype=torch.float64) for name, shape in SHAPES.items()}
    direction = flat(z) / flat(z).norm()
    assert torch.allclose(flat(noisy) - flat(state), 2.5 * direction, rtol=0, atol=1e-12)
    assert torch.equal(flat(noise_at_distance(state, 0.0, generator=g)), flat(state))
    with pytest.raises(ValueError, match=">= 0"):
        noise_at_distance(state, -1.0, generator=g)
    with pytest.raises(ValueError, match=">= 0"):
        noise_at_distance(state, float("nan"), generator=g)


def test_noise_at_distance_in_float32_is_that_far_up_to_rounding():
    state = zoo(1, dtype=torch.float32)[0]
    noisy = noise_at_distance(state, 0.5, generator=torch.Generator().manual_seed(0))
    assert noisy["c"].dtype == torch.float32
    assert (flat(noisy) - flat(state)).norm().item() == pytest.approx(0.5, rel=1e-5)


def test_per_tensor_mean_equals_the_segment_means_of_the_flat_vector(four):
    state = four[1]
    out = per_tensor_mean(state)
    vector = flat(state)
    means = {name: t.mean() for name, t in unflat(vector, state).items()}
    for name in SHAPES:
        assert out[name].shape == state[name].shape
        assert torch.allclose(out[name], means[name].expand(SHAPES[name]), rtol=0, atol=1e-12)
    assert out["step"].item() == state["step"].item()
    assert len({round(float(out[n].flatten()[0]), 6) for n in SHAPES}) == 3  # one mean per tensor, not one overall
    half = per_tensor_mean({"w": torch.tensor([1.0, 2.0], dtype=torch.float16)})["w"]
    assert half.dtype == torch.float16 and half.tolist() == [1.5, 1.5]


# --------------------------------------------------------------------------- devices
def test_streaming_results_stay_on_the_checkpoints_device():
    states = zoo(3)
    g = torch.Generator().manual_seed(0)  # a CPU generator serves a device state (paramgen._random)
    with fake_device() as dev:
        on = [{k: v.to(dev) for k, v in s.items()} for s in states]
        moments = RunningMoments()
        for s in on:
            moments.update(s)
        outputs = [
            moments.mean(),
            moments.std(),
            moments.sample(generator=g),
            nearest_l2_states(on[:1], on),
            pairwise_l2_states(on),
            noise_at_distance(on[0], 1.0, generator=g),
            per_tensor_mean(on[0]),
        ]
        preds = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0], [1, 1, 1, 0]]).to(dev)  # functional metrics follow the predictions
        values, nearest = functional_novelty(preds[:1], preds[1:])
        outputs += [pairwise_disagreement(preds), values, nearest, nearest_error_iou(preds[:1], preds[1:], preds[0], nearest)]
        tensors = tensors_in([list(o.values()) if isinstance(o, dict) else o for o in outputs])
    off = [tuple(t.shape) for t in tensors if t.device != FAKE]
    assert tensors and not off, f"left on the CPU: {off}"
