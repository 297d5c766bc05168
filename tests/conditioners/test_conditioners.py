"""Conditioners: the shared contract, set invariances, contrastive alignment, text, features."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

from paramgen.conditioners import (
    CLIPVisionFeatures,
    ImageSetConditioner,
    IndexConditioner,
    LatentProjection,
    ModuleFeatures,
    OneHotConditioner,
    TextConditioner,
    align_to_latents,
    describe_condition,
    mobilenet_features,
    open_clip_features,
    retrieval_accuracy,
    set_features,
)
from paramgen.conditioners.features import CLIP_MEAN, CLIP_STD
from paramgen.interfaces import Conditioner


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # These models are tiny: with 2 OpenMP threads on a busy 2-core machine, spin-waiting
    # made the alignment test 200x slower (416 s vs 1.8 s). One thread, restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _datasets(shapes, feature_dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(k, s, feature_dim, generator=g) for k, s in shapes]


def _tiny_extractor():
    with torch.random.fork_rng():  # the same extractor every time, without touching the global seed
        torch.manual_seed(1)
        net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 5))
    return ModuleFeatures(net, feature_dim=5, resize=6, channels=3)


def _images():
    g = torch.Generator().manual_seed(2)
    return [torch.rand(3, 2, 1, 8, 8, generator=g), torch.rand(2, 4, 1, 8, 8, generator=g)]


# name -> (build, raw batch, rebuild from config)
CASES = {
    "index": (lambda: IndexConditioner(["a", "b", 3], dim=8), ["b", 3, "a", "b"], None),
    "onehot": (lambda: OneHotConditioner(["a", "b", 3]), ["3", "a"], None),
    "imageset-st": (
        lambda: ImageSetConditioner(feature_dim=5, dim=6, hidden=16, heads=2),
        _datasets([(3, 4), (5, 2), (1, 1)]),
        None,
    ),
    "imageset-isab": (
        lambda: ImageSetConditioner(feature_dim=5, dim=6, hidden=16, heads=2, num_inducing=3, depth=1),
        _datasets([(3, 4), (5, 2)]),
        None,
    ),
    "imageset-mlp": (
        lambda: ImageSetConditioner(feature_dim=5, dim=6, hidden=16, variant="mlp"),
        _datasets([(3, 4), (5, 2)]),
        None,
    ),
    "imageset-extractor": (
        lambda: ImageSetConditioner(feature_dim=5, dim=6, hidden=16, heads=2, feature_extractor=_tiny_extractor()),
        _images(),
        lambda config: ImageSetConditioner.from_config(config, feature_extractor=_tiny_extractor()),
    ),
    "text-proj": (lambda: TextConditioner(dim=12), ["Classify digits.", "Classify clothes.", "Classify digits."], None),
    "text": (lambda: TextConditioner(), ["Classify digits."], None),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    build, raw, rebuild = CASES[request.param]
    torch.manual_seed(0)
    return request.param, build().eval(), raw, rebuild


class TestConditionerContract:
    def test_shape_and_dim(self, case):
        _, cond, raw, _ = case
        out = cond(raw)
        assert isinstance(cond, Conditioner)
        assert out.shape == (len(raw), cond.dim)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()

    def test_deterministic_in_eval(self, case):
        _, cond, raw, _ = case
        assert torch.equal(cond(raw), cond(raw))

    def test_config_roundtrip_through_json_and_safetensors(self, case, tmp_path):
        _, cond, raw, rebuild = case
        config = json.loads(json.dumps(cond.config()))
        state = cond.state_dict()
        path = tmp_path / "cond.safetensors"
        save_file(state, str(path))
        torch.manual_seed(123)  # a different init: only the loaded weights may make them agree
        rebuilt = (rebuild or type(cond).from_config)(config)
        if state:
            assert not all(torch.equal(rebuilt.state_dict()[k], v) for k, v in state.items())
        rebuilt.load_state_dict(load_file(str(path)), strict=True)
        assert rebuilt.config() == cond.config()
        assert torch.equal(rebuilt.eval()(raw), cond(raw))

    def test_state_dict_holds_no_external_weights(self, case):
        _, cond, _, _ = case
        # The frozen MiniLM / feature extractor stay outside: only the conditioner's own weights.
        assert all(not k.startswith(("_encoder", "feature_extractor")) for k in cond.state_dict())
        assert sum(p.numel() for p in cond.parameters()) < 200_000


# ---------------------------------------------------------------- index conditioners


def test_index_unknown_key_lists_known_keys():
    cond = IndexConditioner([f"task{i}" for i in range(20)], dim=4)
    with pytest.raises(KeyError, match=r"unknown key 'cifar'.*task0.*and 10 more"):
        cond(["task1", "cifar"])


def test_index_keys_are_validated():
    with pytest.raises(ValueError, match="distinct"):
        IndexConditioner(["a", 1, "1"])
    with pytest.raises(TypeError, match="wrap one key"):
        IndexConditioner(["a", "b"])("a")
    cond = IndexConditioner(range(4), dim=3)
    assert torch.equal(cond(torch.tensor([2, 0])), cond(["2", 0]))


def test_one_hot_is_fixed_and_parameter_free():
    cond = OneHotConditioner(["x", "y", "z"])
    assert list(cond.parameters()) == [] and cond.state_dict() == {}
    assert torch.equal(cond(["z", "x"]), torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))


# ---------------------------------------------------------------- image sets: invariances

_SET_CONDS = {}


def _set_conditioner(variant):
    if variant not in _SET_CONDS:
        torch.manual_seed(0)
        _SET_CONDS[variant] = ImageSetConditioner(feature_dim=3, dim=4, hidden=8, heads=2, variant=variant).eval()
    return _SET_CONDS[variant]


@given(
    variant=st.sampled_from(["set_transformer", "mlp"]),
    shapes=st.lists(st.tuples(st.integers(2, 6), st.integers(1, 5)), min_size=1, max_size=4),
    seed=st.integers(0, 2**31 - 1),
)
def test_imageset_invariant_to_order_and_batching(variant, shapes, seed):
    cond = _set_conditioner(variant)
    g = torch.Generator().manual_seed(seed)
    items = [torch.randn(k, s, 3, generator=g) for k, s in shapes]
    alone = torch.cat([cond([x]) for x in items])  # (B, dim), one dataset at a time
    with torch.no_grad():
        torch.testing.assert_close(cond(items), alone, atol=1e-5, rtol=0)
        for x in items:
            k, s = x.shape[:2]
            # Shuffle the classes, and the images of each class independently.
            shuffled = torch.stack([x[i][torch.randperm(s, generator=g)] for i in range(k)])
            shuffled = shuffled[torch.randperm(k, generator=g)]
            torch.testing.assert_close(cond([shuffled]), cond([x]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["set_transformer", "mlp"])
def test_imageset_distinguishes_datasets(variant):
    # Invariance is trivial for a constant map: different datasets must give different vectors.
    cond = _set_conditioner(variant)
    a, b = _datasets([(4, 3), (4, 3)], feature_dim=3, seed=5)
    out = cond([a, b + 1.0])
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_set_transformer_uses_the_class_grouping():
    # T o T is not a function of the pooled images: regrouping the same images changes it.
    cond = _set_conditioner("set_transformer")
    (x,) = _datasets([(4, 3)], feature_dim=3, seed=6)
    regrouped = x.transpose(0, 1)  # the same 12 images as 3 classes of 4
    assert (cond([x]) - cond([regrouped])).abs().max() > 1e-4


def test_imageset_extractor_matches_precomputed_features():
    extractor = _tiny_extractor()
    cond = ImageSetConditioner(feature_dim=5, dim=6, hidden=16, heads=2, feature_extractor=extractor).eval()
    plain = ImageSetConditioner.from_config(cond.config())
    plain.load_state_dict(cond.state_dict())
    images = _images()
    feats = [set_features(extractor, x, batch_size=3) for x in images]
    assert feats[1].shape == (2, 4, 5)
    torch.testing.assert_close(cond(images), plain.eval()(feats))
    assert not any(p.requires_grad for p in extractor.parameters())


def test_imageset_rejects_bad_input():
    cond = ImageSetConditioner(feature_dim=5, dim=6, hidden=16, heads=2)
    with pytest.raises(ValueError, match="wrap a single dataset"):
        cond(torch.zeros(3, 2, 5))
    with pytest.raises(ValueError, match="feature_dim=5, got 4"):
        cond([torch.zeros(3, 2, 4)])
    with pytest.raises(ValueError, match="K=0"):
        cond([torch.zeros(0, 2, 5)])
    with pytest.raises(ValueError, match="divisible"):
        ImageSetConditioner(feature_dim=5, hidden=10, heads=4)


# ---------------------------------------------------------------- contrastive alignment


def _alignment_problem(num_groups=8, per_group=2, feature_dim=6, latent_dim=10):
    g = torch.Generator().manual_seed(0)
    means = 2.0 * torch.randn(num_groups, feature_dim, generator=g)  # one distinct mean per dataset
    w = torch.randn(feature_dim, latent_dim, generator=g)
    raw, latents, groups = [], [], []
    for i in range(num_groups):
        latent = torch.tanh(means[i] @ w / feature_dim**0.5)  # a fixed random function of the mean
        for _ in range(per_group):  # several checkpoints per dataset
            raw.append(means[i] + 0.5 * torch.randn(4, 5, feature_dim, generator=g))  # 4 classes x 5 images
            latents.append(latent + 0.05 * torch.randn(latent_dim, generator=g))
            groups.append(f"dataset{i}")
    return raw, torch.stack(latents), groups


@pytest.mark.parametrize("variant", ["set_transformer", "mlp"])
def test_alignment_lowers_loss_retrieves_and_freezes(variant):
    raw, latents, groups = _alignment_problem()
    torch.manual_seed(0)
    cond = ImageSetConditioner(feature_dim=6, dim=16, hidden=32, heads=4, variant=variant)
    proj = LatentProjection(latents.shape[1], cond.dim)
    with torch.no_grad():
        before = retrieval_accuracy(cond.eval(), raw, latents, proj, groups=groups)
    losses = align_to_latents(
        cond, raw, latents, groups=groups, steps=150, batch_size=8, lr=3e-3,
        projection=proj, generator=torch.Generator().manual_seed(0),
    )
    assert len(losses) == 150
    assert sum(losses[-15:]) / 15 < 0.5 * sum(losses[:15]) / 15
    after = retrieval_accuracy(cond, raw, latents, proj, groups=groups)
    assert after >= 0.75 > 1 / 8, (before, after)  # chance is 1/8
    assert not cond.training and not any(p.requires_grad for p in cond.parameters())
    assert not any(p.requires_grad for p in proj.parameters())


def test_alignment_batches_hold_distinct_groups():
    class Spy(nn.Module):
        def __init__(self, keys):
            super().__init__()
            self.inner = IndexConditioner(keys, dim=4)
            self.dim = 4
            self.batches = []

        def forward(self, raw):
            self.batches.append(list(raw))
            return self.inner(raw)

    rows = [f"r{i}" for i in range(12)]
    groups = [f"g{i // 3}" for i in range(12)]  # 4 groups of 3 checkpoints
    spy = Spy(rows)
    align_to_latents(spy, rows, torch.randn(12, 3), groups=groups, steps=30, batch_size=32,
                     proj_dim=5, generator=torch.Generator().manual_seed(0))
    seen = set()
    for batch in spy.batches:
        batch_groups = [groups[rows.index(r)] for r in batch]
        assert len(batch) == 4 and len(set(batch_groups)) == 4
        seen.update(batch)
    assert len(seen) == 12  # every checkpoint of a group gets drawn


def test_alignment_is_reproducible_with_a_generator():
    raw, latents, groups = _alignment_problem(num_groups=4, per_group=1)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        cond = ImageSetConditioner(feature_dim=6, dim=8, hidden=16, heads=2, variant="mlp")
        runs.append(align_to_latents(cond, raw, latents, groups=groups, steps=5,
                                     generator=torch.Generator().manual_seed(3)))
    assert runs[0] == runs[1]


def test_alignment_rejects_single_group():
    with pytest.raises(ValueError, match="at least 2 groups"):
        align_to_latents(IndexConditioner(["a", "b"]), ["a", "b"], torch.zeros(2, 3), groups=["t", "t"])


# ---------------------------------------------------------------- text


@pytest.fixture(scope="module")
def text_cond():
    return TextConditioner(dim=8)


def test_text_similar_sentences_are_closer(text_cond):
    raw = text_cond.embed([
        "Classify images of handwritten digits.",
        "Recognize handwritten numbers in pictures.",
        "Translate English sentences into French.",
    ])  # (3, 384), unit norm
    assert raw.shape == (3, 384)
    torch.testing.assert_close(raw.norm(dim=1), torch.ones(3))
    sim = raw @ raw.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[1, 2] + 0.2


@pytest.mark.parametrize("bad", ["", "   \n", 3, None])
def test_text_rejects_empty_or_non_string(text_cond, bad):
    with pytest.raises(ValueError, match="index 1"):
        text_cond(["A task.", bad])


def test_text_rejects_a_bare_string(text_cond):
    with pytest.raises(ValueError, match="wrap one text"):
        text_cond("A task.")


def test_text_state_dict_is_only_the_projection(text_cond):
    assert sorted(text_cond.state_dict()) == ["projection.bias", "projection.weight"]
    assert sum(p.numel() for p in text_cond.parameters()) == 384 * 8 + 8
    assert text_cond.config() == {"model_path": None, "dim": 8, "normalize": True, "batch_size": 64}


def test_text_cache_and_gradients(text_cond):
    text_cond.clear_cache()
    out = text_cond(["Task A.", "Task B.", "Task A."])
    assert len(text_cond._cache) == 2 and torch.equal(out[0], out[2])
    # Cached embeddings come from inference mode; the projection must still train on them.
    out.pow(2).sum().backward()
    assert text_cond.projection.weight.grad is not None
    text_cond.zero_grad()


def test_describe_condition():
    text = describe_condition(" Sentiment of a tweet. ", ["good -> positive", "bad -> negative"])
    assert text == "Sentiment of a tweet.\nExample 1: good -> positive\nExample 2: bad -> negative"
    with pytest.raises(ValueError, match="description"):
        describe_condition(" ", ["x"])
    with pytest.raises(ValueError, match="sequence of example"):
        describe_condition("Task.", "one string")


# ---------------------------------------------------------------- feature extractors


def _tiny_clip(projected):
    import transformers

    config = transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, projection_dim=16,
    )
    torch.manual_seed(0)
    cls = transformers.CLIPVisionModelWithProjection if projected else transformers.CLIPVisionModel
    return cls(config).eval()


@pytest.mark.parametrize(("projected", "dim"), [(True, 16), (False, 32)])
def test_clip_vision_features(projected, dim):
    model = _tiny_clip(projected)
    extractor = CLIPVisionFeatures(model)
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    out = extractor(images)
    assert extractor.feature_dim == dim and out.shape == (3, dim)
    # The same as resizing and normalizing by hand.
    x = F.interpolate(images, size=(32, 32), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    x = (x.expand(-1, 3, -1, -1) - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    ref = model(pixel_values=x)
    torch.testing.assert_close(out, ref.image_embeds if projected else ref.pooler_output)


def test_module_features_resize_channels_and_checks():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(x)
            return x.mean(dim=(2, 3))  # (N, C)

    extractor = ModuleFeatures(Probe(), feature_dim=3, resize=10, channels=3, mean=[0.5] * 3, std=[0.25] * 3)
    out = extractor(torch.full((2, 1, 28, 28), 0.75))
    assert seen[-1].shape == (2, 3, 10, 10)
    torch.testing.assert_close(out, torch.ones(2, 3))  # (0.75 - 0.5) / 0.25 in every channel
    assert extractor(torch.rand(2, 28, 28)).shape == (2, 3)  # (N, H, W) grayscale
    with pytest.raises(ValueError, match="1 or 3 channels, got 2"):
        extractor(torch.rand(2, 2, 10, 10))
    with pytest.raises(ValueError, match=r"return \(2, 4\), got \(2, 3\)"):
        ModuleFeatures(Probe(), feature_dim=4)(torch.rand(2, 3, 5, 5))
    assert list(extractor.state_dict()) == []  # normalization constants are not weights


def test_open_clip_missing_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(ImportError, match=r"paramgen\[clip\]"):
        open_clip_features("ViT-B-32", "openai")


def test_mobilenet_features():
    extractor = mobilenet_features(resize=32)
    images = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    out = extractor(images)
    assert out.shape == (2, 1280) and extractor.feature_dim == 1280
    assert not extractor.training and not any(p.requires_grad for p in extractor.parameters())
    assert (out >= 0).all() and out.std() > 0  # pooled ReLU6 activations, not constant
