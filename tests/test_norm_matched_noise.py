"""`paramgen.novelty.norm_matched_noise`: the sample's norm and distance, a random direction."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paramgen.novelty import norm_matched_noise


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 40), seed=st.integers(0, 2**16), scale=st.floats(1e-3, 10.0), zero_ref=st.booleans())
def test_norm_and_distance_match(n: int, seed: int, scale: float, zero_ref: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    ref = {"w": torch.zeros(n, dtype=torch.float64) if zero_ref else torch.randn(n, generator=g, dtype=torch.float64), "k": torch.tensor(3)}
    like = {"w": ref["w"] + scale * torch.randn(n, generator=g, dtype=torch.float64), "k": torch.tensor(3)}
    c = norm_matched_noise(ref, like, generator=torch.Generator().manual_seed(seed + 1))
    assert torch.allclose(c["w"].norm(), like["w"].norm(), rtol=1e-9, atol=1e-12)
    assert torch.allclose((c["w"] - ref["w"]).norm(), (like["w"] - ref["w"]).norm(), rtol=1e-7, atol=1e-9)
    assert torch.equal(c["k"], like["k"])


def test_not_inflated_like_additive_noise() -> None:
    """Adding noise at the sample's distance inflates the norm; the matched noise keeps it."""
    g = torch.Generator().manual_seed(0)
    ref = {"w": torch.randn(64, 64, generator=g)}
    moved = ref["w"] + torch.randn(64, 64, generator=g)
    like = {"w": moved * ref["w"].norm() / moved.norm()}  # a sample as large as ref, far from it
    c = norm_matched_noise(ref, like, generator=g)
    additive = ref["w"] + float((like["w"] - ref["w"]).norm()) * torch.nn.functional.normalize(torch.randn(64 * 64, generator=g), dim=0).reshape(64, 64)
    assert abs(float(c["w"].norm() / like["w"].norm()) - 1) < 1e-5
    assert float(additive.norm() / like["w"].norm()) > 1.05  # the old row's inflation, for contrast
    assert c["w"].dtype == torch.float32 and c["w"].shape == like["w"].shape


def test_direction_is_random_and_seeded() -> None:
    ref = {"w": torch.randn(100, generator=torch.Generator().manual_seed(1))}
    like = {"w": ref["w"] * 0.5 + torch.randn(100, generator=torch.Generator().manual_seed(2))}
    a = norm_matched_noise(ref, like, generator=torch.Generator().manual_seed(3))["w"]
    b = norm_matched_noise(ref, like, generator=torch.Generator().manual_seed(3))["w"]
    c = norm_matched_noise(ref, like, generator=torch.Generator().manual_seed(4))["w"]
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert float(torch.nn.functional.cosine_similarity(a - ref["w"], like["w"] - ref["w"], dim=0)) < 0.5


def test_errors_name_the_tensor() -> None:
    with pytest.raises(KeyError, match="'x'"):
        norm_matched_noise({"w": torch.zeros(2)}, {"x": torch.zeros(2)})
    with pytest.raises(ValueError, match="shape"):
        norm_matched_noise({"w": torch.zeros(2)}, {"w": torch.zeros(3)})
    with pytest.raises(ValueError, match="finite"):
        norm_matched_noise({"w": torch.zeros(2)}, {"w": torch.tensor([1.0, float("nan")])})
