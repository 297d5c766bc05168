"""The behavioural loss of the tokenizer stage (FitConfig.behaviour_weight, fit(behaviour=))
and paramgen.behaviour.ChunkBehaviour."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import paramgen
from paramgen import Generator, ModelVectorizer, ParamSpec
from paramgen.behaviour import ChunkBehaviour
from paramgen.chunks import ChunkDataset, ChunkLayout
from paramgen.normalize import ChunkStats
from paramgen.pipelines import chunkwise
from paramgen.priors import KDEPrior
from paramgen.tokenizers import IdentityTokenizer, PositionalVAETokenizer, VAETokenizer
from paramgen.training import FitConfig, NonFiniteLossError, fit

SPEC = ParamSpec.from_module(nn.Linear(4, 2))  # 10 weights


def _gen(tokenizer=None) -> Generator:
    torch.manual_seed(0)
    tok = tokenizer or VAETokenizer(rows=1, width=10, latent_channels=2, latent_length=2, hidden_channels=8, num_down=1)
    return Generator(vectorizer=ModelVectorizer(SPEC), tokenizer=tok, prior=KDEPrior())


def _flat() -> torch.Tensor:
    return torch.randn(16, 10, generator=torch.Generator().manual_seed(0))


def _config(**kw) -> FitConfig:
    return FitConfig(**({"tokenizer_steps": 5, "batch_size": 8, "progress": False, "log_every": 1} | kw))


class _Tracker:
    def __init__(self) -> None:
        self.metrics: dict[int, dict[str, float]] = {}

    def log_params(self, params) -> None: ...

    def log_metrics(self, metrics, *, step=None) -> None:
        self.metrics.setdefault(step, {}).update(metrics)

    def log_artifact(self, path) -> None: ...

    def close(self) -> None: ...


# ------------------------------------------------------------------ the engine
def test_the_behavioural_loss_trains_the_tokenizer():
    calls: list[tuple[tuple[int, ...], bool, list[str]]] = []
    grads: list[torch.Tensor] = []

    def behaviour(decoded, batch):
        calls.append((tuple(decoded.shape), decoded.requires_grad, sorted(batch)))
        decoded.register_hook(grads.append)
        return (decoded[:, :3] - 1.0).pow(2).mean()  # pulls three weights towards 1

    tracker = _Tracker()
    plain = fit(_gen(), _flat(), config=_config())
    guided = fit(_gen(), _flat(), config=_config(behaviour_weight=2.0, behaviour_every=2), behaviour=behaviour, tracker=tracker)
    assert [c[0] for c in calls] == [(8, 10)] * 3  # steps 1, 3 and 5 of 5: (B, N * C) rows
    assert all(c[1] for c in calls) and all({"x", "mask"} <= set(c[2]) for c in calls)
    assert len(grads) == 3 and all(g.abs().sum() > 0 for g in grads)  # the weighted loss reaches the decoder
    assert [s for s, m in tracker.metrics.items() if "tokenizer/behaviour" in m] == [1, 3, 5]
    differs = [k for k, v in plain.tokenizer.state_dict().items() if not torch.equal(v, guided.tokenizer.state_dict()[k])]
    assert differs  # weight 0 (no behaviour) and weight 2 train different tokenizers
    with torch.no_grad():  # and the guided one moved where the behaviour pulls
        x, _ = plain.layout.to_rows(_flat(), None, plain.layout.check_archs(None, 16))
        def gap(gen):
            rows = gen.tokenizer.decode(gen.tokenizer.encode(x).latents)
            return float((rows[:, 0, :3] - 1.0).pow(2).mean())
        assert gap(guided) < gap(plain)


def test_the_behaviour_is_part_of_the_loss_the_engine_checks():
    with pytest.raises(NonFiniteLossError, match="tokenizer loss became NaN or Inf at step 1"):
        fit(_gen(), _flat(), config=_config(behaviour_weight=1.0), behaviour=lambda d, b: d.sum() * math.nan)
    with pytest.raises(TypeError, match=r"must return a scalar \(0-dim\) tensor, got a tensor of shape \(8,\)"):
        fit(_gen(), _flat(), config=_config(behaviour_weight=1.0), behaviour=lambda d, b: d.sum(1))
    with pytest.raises(TypeError, match="got float"):
        fit(_gen(), _flat(), config=_config(behaviour_weight=1.0), behaviour=lambda d, b: 1.0)


def test_no_ignored_behaviour_argument():
    with pytest.raises(ValueError, match=r"behaviour_weight=0.5 needs behaviour="):
        fit(_gen(), _flat(), config=_config(behaviour_weight=0.5))
    with pytest.raises(ValueError, match="behaviour_weight=0 would ignore it"):
        fit(_gen(), _flat(), config=_config(), behaviour=lambda d, b: d.mean())
    with pytest.raises(ValueError, match="tokenizer_steps=0: the stage does not run"):
        fit(_gen(), _flat(), config=_config(tokenizer_steps=0, behaviour_weight=1.0), behaviour=lambda d, b: d.mean())
    with pytest.raises(ValueError, match="IdentityTokenizer has no trainable weights"):
        fit(_gen(IdentityTokenizer(rows=1, width=10)), _flat(), config=_config(behaviour_weight=1.0), behaviour=lambda d, b: d.mean())
    with pytest.raises(TypeError, match="behaviour must be a callable"):
        fit(_gen(), _flat(), config=_config(behaviour_weight=1.0), behaviour="mse")


@pytest.mark.parametrize(("field", "value"), [("behaviour_weight", -1.0), ("behaviour_weight", math.inf), ("behaviour_weight", True), ("behaviour_every", 0), ("behaviour_every", 1.5)])
def test_fit_config_validates_the_behaviour_fields(field, value):
    with pytest.raises(ValueError, match=f"FitConfig.{field}"):
        FitConfig(**{field: value})


def test_paramgen_fit_forwards_the_behaviour():
    seen = []
    paramgen.fit(_gen(), _flat(), behaviour=lambda d, b: seen.append(1) or d.pow(2).mean(), behaviour_weight=0.1,
                 tokenizer_steps=2, batch_size=8, progress=False, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert seen == [1, 1]
    with pytest.raises(ValueError, match="needs behaviour="):
        paramgen.fit(_gen(), _flat(), behaviour_weight=0.1, tokenizer_steps=2, progress=False)


def test_a_positional_tokenizer_needs_positions_in_the_batches():
    tok = PositionalVAETokenizer(width=10, num_chunks=4, latent_channels=2, latent_length=2, hidden_channels=8, num_down=1, position_dim=4)
    with pytest.raises(ValueError, match="positional: every training item needs a 'position'"):
        fit(_gen(tok), _flat(), config=_config())


# ------------------------------------------------------------------ ChunkBehaviour
NET = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))  # 24 + 4 + 12 + 3 = 43 weights
INPUTS = torch.randn(32, 5, generator=torch.Generator().manual_seed(1))  # the calibration batch


def _forward(calls: list | None = None):
    def forward(state):
        if calls is not None:
            calls.append(1)
        return torch.func.functional_call(NET, dict(state), (INPUTS,))

    return forward


def _checkpoints(n: int = 3) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    return [{k: v.detach() + 0.1 * torch.randn(v.shape, generator=g) for k, v in NET.state_dict().items()} for _ in range(n)]


class _Pinned:
    """What ChunkBehaviour reads of a `paramgen.base.PinnedBase`: ``tensor(name)``."""

    def __init__(self, state):
        self.state = state

    def tensor(self, name):
        return self.state[name]


class _Data:
    """A chunk dataset over a base, as ChunkBehaviour reads it: ``layout``, ``base``,
    ``state_dict(i)`` (weights w); its items are the deltas D = w - base."""

    def __init__(self, layout, checkpoints, base):
        self.layout, self.base, self._w = layout, _Pinned(base), checkpoints
        self.deltas = ChunkDataset.from_state_dicts(layout, [{k: w[k] - base[k] for k in w} for w in checkpoints])

    def state_dict(self, i):
        return {k: v.clone() for k, v in self._w[i].items()}


def _setup(chunk_size: int = 8, base: bool = False):
    layout = ChunkLayout(ParamSpec.from_module(NET), chunk_size)
    checkpoints = _checkpoints()
    if base:
        data = _Data(layout, checkpoints, NET.state_dict())
        items = data.deltas
    else:
        data = items = ChunkDataset.from_state_dicts(layout, checkpoints)
    gen = chunkwise(layout, hidden_channels=8, base_channels=8, latent_length=2, timesteps=10)
    gen.stats = ChunkStats(layout).fit_chunks(items)  # ChunkwiseGenerator.fit sets them before the tokenizer stage
    return gen, data, items


def _rows(gen, items, index):
    """The normalized chunks of dataset items ``index`` and their batch."""
    its = [items[i] for i in index]
    batch = {"checkpoint": torch.tensor([it["checkpoint"] for it in its]), "chunk": [it["chunk"] for it in its]}
    return gen.stats.transform_chunks(torch.stack([it["values"] for it in its]), batch["chunk"]), batch, its


@pytest.mark.parametrize("base", [False, True], ids=["weights", "deltas over a base"])
def test_exact_chunks_reproduce_the_outputs(base):
    gen, data, items = _setup(base=base)
    behaviour = ChunkBehaviour(gen, data, _forward(), items=4)
    index = [2, 6, 7 + 6, 2 * 7 + 4]  # chunks of three checkpoints (7 chunks each), the last ones padded
    exact, batch, its = _rows(gen, items, index)
    assert float(behaviour(exact, batch)) < 1e-10
    padding = exact.clone()
    padding[~torch.stack([it["mask"] for it in its])] = 100.0  # past a tensor's end: dropped
    assert float(behaviour(padding, batch)) < 1e-10
    assert float(behaviour(exact + 0.5, batch)) > 1e-3


def test_the_loss_is_the_scaled_output_error_and_differentiable():
    gen, data, items = _setup()
    behaviour = ChunkBehaviour(gen, data, _forward(), items=2)
    exact, batch, its = _rows(gen, items, [0, 7 + 3, 5])  # a third row, past items=2: not used
    decoded = (exact + 0.3 * torch.randn(exact.shape, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    loss = behaviour(decoded, batch)
    expected = []
    for r in range(2):  # by hand: put the chunk back, run, compare with the original's outputs
        w = data.state_dict(batch["checkpoint"][r].item())
        chunk = batch["chunk"][r]
        t = data.layout.tensors[int(data.layout.tensor_ids[chunk])]
        start, length = int(data.layout.offsets[chunk]), int(data.layout.lengths[chunk])
        target = _forward()(w)
        flat = w[t.name].reshape(-1).clone()
        flat[start : start + length] = gen.stats.inverse_chunks(decoded.detach()[r : r + 1], [chunk])[0, :length]
        out = _forward()({**w, t.name: flat.reshape(t.shape)})
        expected.append(float((out - target).pow(2).mean() / target.var()))
    assert float(loss.detach()) == pytest.approx(sum(expected) / 2, rel=1e-5)
    loss.backward()
    assert decoded.grad[:2].abs().sum() > 0 and decoded.grad[2].abs().sum() == 0
    assert decoded.grad[1, int(data.layout.lengths[3]) :].abs().sum() == 0  # no gradient to padding (chunk 3 holds 4 values)


def test_targets_and_weights_are_cached_per_checkpoint():
    gen, data, items = _setup()
    calls: list = []
    behaviour = ChunkBehaviour(gen, data, _forward(calls), items=2, cache=2)
    exact, batch, _ = _rows(gen, items, [0, 1])  # checkpoint 0 twice
    behaviour(exact, batch)
    assert len(calls) == 1 + 2  # one target, two rows
    behaviour(exact, batch)
    assert len(calls) == 3 + 2  # the target is reused
    for c in (1, 2, 0):  # three checkpoints through a cache of two: 0 is read again
        exact, batch, _ = _rows(gen, items, [7 * c, 7 * c + 1])
        behaviour(exact, batch)
    assert len(calls) == 5 + 3 * (1 + 2)


def test_position_serves_for_chunk():
    gen, data, items = _setup()
    exact, batch, _ = _rows(gen, items, [3, 4])
    batch = {"checkpoint": batch["checkpoint"], "position": batch.pop("chunk")}
    assert float(ChunkBehaviour(gen, data, _forward())(exact, batch)) < 1e-10


def test_chunk_behaviour_errors():
    gen, data, items = _setup()
    exact, batch, _ = _rows(gen, items, [0, 1])
    behaviour = ChunkBehaviour(gen, data, _forward())
    with pytest.raises(ValueError, match=r"needs 'checkpoint'"):
        behaviour(exact, {"chunk": batch["chunk"]})
    with pytest.raises(ValueError, match=r"needs 'chunk' or 'position'"):
        behaviour(exact, {"checkpoint": batch["checkpoint"]})
    with pytest.raises(ValueError, match=r"expected decoded chunks \(B, 8\)"):
        behaviour(exact[:, None], batch)
    with pytest.raises(ValueError, match="no spread"):
        ChunkBehaviour(gen, data, lambda state: torch.zeros(4))(exact, batch)
    with pytest.raises(ValueError, match="items must be a positive integer"):
        ChunkBehaviour(gen, data, _forward(), items=0)
    with pytest.raises(TypeError, match="forward must be a callable"):
        ChunkBehaviour(gen, data, None)
    with pytest.raises(TypeError, match="lacks layout, base, state_dict"):
        ChunkBehaviour(gen, object(), _forward())
    gen.stats = None
    with pytest.raises(RuntimeError, match="no chunk statistics yet"):
        behaviour(exact, batch)


def test_a_chunkwise_fit_with_the_behavioural_loss():
    """End to end: ChunkSamples' items carry checkpoint and position through the engine's
    batches; ChunkwiseGenerator.fit forwards behaviour= to the engine; the loss is logged."""
    layout = ChunkLayout(ParamSpec.from_module(NET), 8)
    data = ChunkDataset.from_state_dicts(layout, _checkpoints())
    tracker = _Tracker()
    for positional in (False, True):
        gen = chunkwise(layout, hidden_channels=8, base_channels=8, latent_length=2, timesteps=10, positional=positional, position_dim=8)
        config = FitConfig(tokenizer_steps=3, prior_steps=1, batch_size=6, progress=False, behaviour_weight=1.0, log_every=1)
        gen.fit(data, config=config, behaviour=ChunkBehaviour(gen, data, _forward(), items=2), tracker=tracker)
        assert all(math.isfinite(tracker.metrics[s]["tokenizer/behaviour"]) for s in (1, 2, 3))
        assert tuple(gen.sample_chunks([0, 6], generator=torch.Generator().manual_seed(0), steps=2).shape) == (2, 8)
