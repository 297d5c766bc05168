"""paramgen.anchors and Generator(anchor=): residual targets over the prototype head, saved and loaded."""

from __future__ import annotations

import functools
import json

import pytest
import torch

import paramgen
from paramgen import Generator
from paramgen.anchors import PrototypeAnchor
from paramgen.conditioners.ordered import OrderedSetConditioner
from paramgen.heads import class_condition, head_spec, prototype_head
from paramgen.pipelines import d2nwg

K, F = 3, 4


def _support(seed: int, b: int = 6, shots: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(K, shots, F, generator=g) for _ in range(b)]


def _pipeline() -> Generator:
    cond = functools.partial(OrderedSetConditioner, feature_dim=F, num_classes=K, per_class=4, hidden=8)
    return d2nwg(head_spec(F, K), condition=cond, seed=0, latent_length=8, hidden_channels=8, base_channels=8)


@pytest.fixture(scope="module")
def fitted() -> tuple[Generator, list[torch.Tensor]]:
    conds = _support(0, b=8)
    spec = head_spec(F, K)
    w = torch.randn(8, spec.numel, generator=torch.Generator().manual_seed(1))
    anchor = PrototypeAnchor(kind="prototype_head").fit_scale(w, conds, spec)
    gen = _pipeline().with_anchor(anchor)
    paramgen.fit(gen, w, conds, tokenizer_steps=2, prior_steps=2, generator=torch.Generator().manual_seed(0), progress=False)
    return gen, conds


def test_head_anchor_is_the_prototype_head_in_spec_order():
    conds = _support(2)
    spec = head_spec(F, K)
    a = PrototypeAnchor(kind="prototype_head", scale=0.5)
    pw, pb = prototype_head(torch.stack(conds))  # (B, K, F), (B, K)
    expected, _ = spec.flatten_stacked({"weight": pw, "bias": pb})
    torch.testing.assert_close(a.vectors(conds, spec), expected)
    torch.testing.assert_close(a(conds, spec), 0.5 * expected)


def test_row_anchor_reads_the_feature_half_of_class_condition():
    feats = torch.randn(K, 5, F, generator=torch.Generator().manual_seed(3))
    spec = head_spec(F, 2).__class__.from_module(torch.nn.Linear(F, 1))
    a = PrototypeAnchor(kind="prototype_row", feature_dim=F)
    vec = a.vectors([class_condition(feats, k) for k in range(K)], spec)  # (K, F + 1)
    pw, pb = prototype_head(feats)  # (K, F), (K,)
    torch.testing.assert_close(vec, torch.cat([pw, pb[:, None]], 1))


def test_residual_then_anchor_is_identity_and_scale_is_least_squares():
    conds = _support(4)
    spec = head_spec(F, K)
    a = PrototypeAnchor().vectors(conds, spec).double()
    w = (1.7 * a + 0.01 * torch.randn(a.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)).float()
    fitted = PrototypeAnchor().fit_scale(w, conds, spec)
    assert fitted.scale == pytest.approx(float((w.double() * a).sum() / a.pow(2).sum()))
    assert abs(fitted.scale - 1.7) < 0.01
    r = fitted.residual(w, conds, spec)
    torch.testing.assert_close(r + fitted(conds, spec), w)


def test_anchor_follows_the_conditions_device_and_dtype():
    spec = head_spec(F, K)
    conds64 = [c.double() for c in _support(5, b=2)]
    assert PrototypeAnchor().vectors(conds64, spec).dtype == torch.float64
    meta = [torch.empty(K, 2, F, device="meta") for _ in range(2)]
    out = PrototypeAnchor(scale=2.0)(meta, spec)
    assert out.device.type == "meta" and out.shape == (2, spec.numel)


def test_clear_errors_on_conditions_without_what_the_anchor_needs():
    spec = head_spec(F, K)
    with pytest.raises(ValueError, match=r"support set \(K=3, S>=1, F=4\).*condition 1 has shape \(2, 2, 4\)"):
        PrototypeAnchor().vectors([torch.zeros(K, 2, F), torch.zeros(2, 2, F)], spec)
    with pytest.raises(TypeError, match="condition 0 is str"):
        PrototypeAnchor().vectors(["task0"], spec)
    row_spec = head_spec(F, 2).__class__.from_module(torch.nn.Linear(F, 1))
    with pytest.raises(ValueError, match=r"first 4 channels are features"):
        PrototypeAnchor(kind="prototype_row", feature_dim=F).vectors([torch.zeros(1, 3, F - 1)], row_spec)
    with pytest.raises(ValueError, match="needs a spec of weight \\(K, F\\) and bias"):
        PrototypeAnchor().check_spec(head_spec(F, K).__class__.from_module(torch.nn.Sequential(torch.nn.Linear(F, K), torch.nn.Linear(K, K))))
    with pytest.raises(ValueError, match="kind must be one of"):
        PrototypeAnchor(kind="nearest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scale must be a finite number"):
        PrototypeAnchor(scale=float("nan"))
    with pytest.raises(ValueError, match="every anchor is zero"):
        PrototypeAnchor().fit_scale(torch.ones(1, spec.numel), [torch.zeros(K, 1, F)], spec)


def test_generator_refuses_an_anchor_it_cannot_use():
    gen = _pipeline()
    with pytest.raises(ValueError, match="needs a spec of weight \\(1, F\\)"):
        gen.with_anchor(PrototypeAnchor(kind="prototype_row"))
    with pytest.raises(ValueError, match="has no anchor"):
        gen.residual_targets(torch.zeros(1, head_spec(F, K).numel), _support(0, b=1))


def test_samples_are_the_residual_samples_plus_the_anchor(fitted):
    gen, conds = fitted
    plain = gen.with_anchor(None)
    new = _support(9, b=3)
    got = gen.sample_flat(new, 2, generator=torch.Generator().manual_seed(0))
    res = plain.sample_flat(new, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, res + gen.anchor(new, gen.spec).repeat_interleave(2, 0))
    with pytest.raises(ValueError, match="reconstruct"):
        gen.reconstruct(got)


def test_save_load_round_trip_gives_the_same_samples(fitted, tmp_path):
    gen, _ = fitted
    gen.save_pretrained(tmp_path / "g")
    back = Generator.from_pretrained(tmp_path / "g")
    assert back.anchor == gen.anchor
    new = _support(11, b=2)
    a = gen.sample(new, 2, generator=torch.Generator().manual_seed(3))
    b = back.sample(new, 2, generator=torch.Generator().manual_seed(3))
    for x, y in zip(a, b, strict=True):
        for name in x:
            assert torch.equal(x[name], y[name])


def test_an_edited_anchor_record_is_refused(fitted, tmp_path):
    gen, _ = fitted
    path = gen.save_pretrained(tmp_path / "g")
    config = json.loads((path / "config.json").read_text())
    config["anchor"]["scale"] = 0.0
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="anchor record was edited"):
        Generator.from_pretrained(path)
    del config["anchor"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="anchor record was edited"):
        Generator.from_pretrained(path)


# ----------------------------------------------------------------------------- nearest task
def _task_zoo(spec, tasks: int = 3, draws: int = 2, per_task: int = 3):
    """Tasks whose conditions differ by class means; each task's checkpoints scatter around its own centre."""
    g = torch.Generator().manual_seed(5)
    centres = {f"t{i}": torch.randn(K, 1, F, generator=g) * 3 for i in range(tasks)}
    conds_by_task = {t: [c + 0.1 * torch.randn(K, 2, F, generator=g) for _ in range(draws)] for t, c in centres.items()}
    values = {t: torch.randn(spec.numel, generator=g) for t in centres}
    flat, conds = [], []
    for t in centres:
        for i in range(per_task):
            flat.append(values[t] + 0.01 * torch.randn(spec.numel, generator=g))
            conds.append(conds_by_task[t][i % draws])
    return centres, conds_by_task, values, torch.stack(flat), conds


def test_nearest_task_anchor_returns_the_nearest_tasks_weights_and_keeps_class_order():
    from paramgen.anchors import NearestTaskAnchor

    spec = head_spec(F, K)
    centres, conds_by_task, values, _, _ = _task_zoo(spec)
    anchor = NearestTaskAnchor.from_zoo(conds_by_task, values, scale=0.5)
    fresh = [c + 0.1 * torch.randn(K, 2, F, generator=torch.Generator().manual_seed(9)) for c in centres.values()]
    assert anchor.nearest(fresh) == list(centres)
    torch.testing.assert_close(anchor.vectors(fresh, spec), torch.stack([values[t] for t in centres]))
    torch.testing.assert_close(anchor(fresh, spec), 0.5 * torch.stack([values[t] for t in centres]))
    # The same classes in another order are another task (the weights' outputs are in class order).
    order = NearestTaskAnchor.from_zoo({"a": [centres["t0"]], "a swapped": [centres["t0"][[1, 0, 2]]]}, {"a": values["t0"], "a swapped": values["t1"]})
    assert order.nearest([fresh[0], fresh[0][[1, 0, 2]]]) == ["a", "a swapped"]
    half = anchor.vectors([fresh[1].to(torch.float16)], spec)
    assert half.dtype == torch.float16
    with pytest.raises(ValueError, match=r"\(K, S>=1, F\)"):
        anchor.vectors([torch.randn(K, F)], spec)
    with pytest.raises(ValueError, match="keys of 6 values"):
        anchor.vectors([torch.randn(K, 2, 2)], spec)
    with pytest.raises(ValueError, match="NaN"):
        anchor.vectors([torch.full((K, 2, F), float("nan"))], spec)
    with pytest.raises(ValueError, match="stores weights of"):
        anchor.check_spec(head_spec(F + 1, K))
    with pytest.raises(ValueError, match="same tasks"):
        NearestTaskAnchor.from_zoo(conds_by_task, {"t0": values["t0"]})


def test_generator_with_a_nearest_task_anchor_fits_residuals_and_saves_its_memory(tmp_path):
    from paramgen.anchors import NearestTaskAnchor

    spec = head_spec(F, K)
    _, conds_by_task, values, flat, conds = _task_zoo(spec)
    anchor = NearestTaskAnchor.from_zoo(conds_by_task, values)
    gen = _pipeline().with_anchor(anchor)
    res = gen.residual_targets(flat, conds)
    assert float(res.abs().max()) < 0.1  # each checkpoint is its nearest task's value plus a small residual
    paramgen.fit(gen, flat, conds, tokenizer_steps=2, prior_steps=2, generator=torch.Generator().manual_seed(0), progress=False)
    path = gen.save_pretrained(tmp_path / "g")
    assert (path / "anchor.safetensors").exists()
    back = Generator.from_pretrained(path)
    assert isinstance(back.anchor, NearestTaskAnchor) and back.anchor.tasks == anchor.tasks
    assert torch.equal(back.anchor.values, anchor.values) and torch.equal(back.anchor.keys, anchor.keys)
    new = conds[:2]
    a = gen.sample_flat(new, 2, generator=torch.Generator().manual_seed(3))
    b = back.sample_flat(new, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    (path / "anchor.safetensors").write_bytes((path / "anchor.safetensors").read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match="tensors_sha256 does not match"):
        Generator.from_pretrained(path)
    (path / "anchor.safetensors").unlink()
    with pytest.raises(ValueError, match="missing, or not the file"):
        Generator.from_pretrained(path)
