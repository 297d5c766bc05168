"""Tests for paramgen.models.mlp."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paramgen.models import MLP


def test_flattens_any_input_shape_and_keys_are_readable():
    net = MLP(64, [32, 16], 10)
    assert net(torch.randn(5, 64)).shape == (5, 10)
    assert net(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    assert list(net.state_dict()) == [
        "layers.0.weight", "layers.0.bias",
        "layers.1.weight", "layers.1.bias",
        "head.weight", "head.bias",
    ]
    assert net.state_dict()["layers.1.weight"].shape == (16, 32)
    assert sum(p.numel() for p in net.parameters()) == 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10


def test_batchnorm_keys_and_effect():
    net = MLP(40, [16, 16], 3, batchnorm=True).train()
    keys = set(net.state_dict())
    assert {"norms.0.weight", "norms.1.running_var", "layers.1.weight", "head.weight"} <= keys
    x = torch.randn(32, 40)
    # Batch norm right after the first linear layer makes training-mode outputs invariant
    # to the scale of the input; a network that skipped the norms would not be.
    torch.testing.assert_close(net(x), net(1000.0 * x), atol=1e-3, rtol=1e-3)


def test_no_hidden_layers_is_a_linear_classifier():
    net = MLP(12, [], 4)
    assert list(net.state_dict()) == ["head.weight", "head.bias"]
    x = torch.randn(3, 12)
    torch.testing.assert_close(net(x), x @ net.head.weight.T + net.head.bias)


def test_dropout_only_in_training():
    net = MLP(10, [64], 2, dropout=0.5)
    x = torch.randn(4, 10)
    net.eval()
    torch.testing.assert_close(net(x), net(x))
    net.train()
    assert not torch.equal(net(x), net(x))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="expected 64 features"):
        MLP(64, [8], 2)(torch.randn(2, 1, 7, 7))
    with pytest.raises(ValueError, match="dropout"):
        MLP(4, [8], 2, dropout=1.0)
    with pytest.raises(ValueError, match="hidden"):
        MLP(4, [8, 0], 2)


@settings(max_examples=20)
@given(
    hidden=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    batchnorm=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_permuting_hidden_units_keeps_the_function(hidden, batchnorm, seed):
    torch.manual_seed(seed)
    net = MLP(6, hidden, 3, batchnorm=batchnorm)
    if batchnorm:  # non-trivial running statistics
        net.train()(torch.randn(16, 6))
    net.eval()
    x = torch.randn(5, 6)
    before = net(x)
    state = net.state_dict()
    for i, width in enumerate(hidden):
        perm = torch.randperm(width)
        state[f"layers.{i}.weight"] = state[f"layers.{i}.weight"][perm]
        state[f"layers.{i}.bias"] = state[f"layers.{i}.bias"][perm]
        if batchnorm:
            for name in ("weight", "bias", "running_mean", "running_var"):
                state[f"norms.{i}.{name}"] = state[f"norms.{i}.{name}"][perm]
        after = f"layers.{i + 1}.weight" if i + 1 < len(hidden) else "head.weight"
        state[after] = state[after][:, perm]
    net.load_state_dict(state)
    torch.testing.assert_close(net(x), before)
