"""Chunk-wise generation over a pinned base (deltas chunk by chunk, base + D streamed) and
chunk positions threaded to a positional tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from paramgen import ParamSpec
from paramgen.base import BaseMismatchError, PinnedBase
from paramgen.chunks import ChunkDataset, ChunkLayout
from paramgen.chunkwise import ChunkSamples, ChunkwiseGenerator
from paramgen.interfaces import TokenizerOutput
from paramgen.normalize import ChunkStats
from paramgen.priors import DiffusionPrior
from paramgen.tokenizers import VAETokenizer
from paramgen.training import FitConfig

K = 32
CONFIG = FitConfig(tokenizer_steps=2, prior_steps=2, batch_size=8, progress=False)


def net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(12, 10), torch.nn.LayerNorm(10), torch.nn.Linear(10, 3))


def base_and_tunes(n: int = 3) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    torch.manual_seed(0)
    base = {k: v.detach().clone() for k, v in net().state_dict().items()}
    g = torch.Generator().manual_seed(1)
    return base, [{k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(n)]


def write(tmp_path: Path, states: list[dict[str, torch.Tensor]], base: dict[str, torch.Tensor]) -> tuple[list[Path], Path]:
    paths = []
    for i, sd in enumerate(states):
        paths.append(tmp_path / f"m{i}.safetensors")
        save_file(sd, str(paths[-1]))
    save_file(base, str(tmp_path / "base.safetensors"))
    return paths, tmp_path / "base.safetensors"


def build(layout: ChunkLayout, tokenizer: object = None, base: object = None) -> ChunkwiseGenerator:
    torch.manual_seed(0)
    tok = tokenizer or VAETokenizer(rows=1, width=K, latent_channels=2, latent_length=4, hidden_channels=8, num_down=1)
    prior = DiffusionPrior(shape=tok.latent_shape, cond_dim=16, base_channels=8, channel_mults=(1,), timesteps=20)
    return ChunkwiseGenerator.build(layout, tokenizer=tok, prior=prior, position_dim=16, base=base)


def test_fit_on_deltas_and_stream_base_plus_delta_exactly(tmp_path):
    base, states = base_and_tunes()
    paths, base_path = write(tmp_path, states, base)
    layout = ChunkLayout(ParamSpec.from_state_dict(base), K)
    data = ChunkDataset(layout, paths, base=base_path)
    gen = build(layout, base=base_path).fit(data, config=CONFIG)
    # chunk statistics are those of D (means near 0, stds near 0.01), not of the weights
    expected = ChunkStats(layout).fit_chunks(ChunkDataset.from_state_dicts(layout, [{k: sd[k] - base[k] for k in sd} for sd in states]))
    assert torch.allclose(gen.stats.mean, expected.mean, atol=1e-7) and torch.allclose(gen.stats.std, expected.std, rtol=1e-5)
    assert float(gen.stats.std.max()) < 0.05
    # base + D, streamed into a dict and into a file, equals base + what the inner generator decoded
    ids = torch.arange(layout.num_chunks)
    kwargs = {"sampler": "ddim", "steps": 3}
    d = gen.sample_chunks(ids, generator=torch.Generator().manual_seed(5), **kwargs)  # (N, K) deltas
    full = d.double() + gen.base_chunks(ids)
    out = gen.sample(batch_size=layout.num_chunks, generator=torch.Generator().manual_seed(5), **kwargs)
    streamed = load_file(str(gen.sample(out=tmp_path / "s.safetensors", batch_size=layout.num_chunks, generator=torch.Generator().manual_seed(5), **kwargs)))
    for i, t in enumerate(layout.tensors):
        rows = layout.chunks_of(i)
        want = full[rows.start : rows.stop].reshape(-1)[: t.numel].to(t.torch_dtype).reshape(t.shape)
        assert torch.equal(out[t.name], want), t.name
        assert torch.equal(streamed[t.name], want), t.name
    assert (out["0.weight"] - base["0.weight"]).abs().max() < 0.5  # near the base, not near zero
    with pytest.raises(ValueError, match="pinned base.*drop base="):
        gen.sample(base=base)


def test_tensors_outside_the_layout_come_from_the_pinned_base(tmp_path):
    base, states = base_and_tunes(2)
    layout = ChunkLayout(ParamSpec.from_state_dict(base), K, include=["2.weight", "2.bias"])
    gen = build(layout, base=base).fit(ChunkDataset.from_state_dicts(layout, states, base=base), config=CONFIG)
    out = gen.sample(generator=torch.Generator().manual_seed(0), sampler="ddim", steps=2)
    assert set(out) == set(base)
    assert torch.equal(out["0.weight"], base["0.weight"]) and torch.equal(out["1.bias"], base["1.bias"])
    net().load_state_dict(out)


def test_fit_refuses_a_dataset_of_another_base(tmp_path):
    base, states = base_and_tunes(2)
    layout = ChunkLayout(ParamSpec.from_state_dict(base), K)
    other = {k: v + 1 for k, v in base.items()}
    with pytest.raises(BaseMismatchError, match="dataset's base"):
        build(layout, base=base).fit(ChunkDataset.from_state_dicts(layout, states, base=other), config=CONFIG)
    with pytest.raises(BaseMismatchError, match="build the ChunkDataset with base="):
        build(layout, base=base).fit(ChunkDataset.from_state_dicts(layout, states), config=CONFIG)
    with pytest.raises(BaseMismatchError, match="has none"):
        build(layout).fit(ChunkDataset.from_state_dicts(layout, states, base=base), config=CONFIG)
    with pytest.raises(BaseMismatchError, match="'0.weight'"):
        build(layout, base={**base, "0.weight": torch.zeros(10, 13)})


def test_save_and_load_record_and_check_the_base(tmp_path):
    base, states = base_and_tunes(2)
    layout = ChunkLayout(ParamSpec.from_state_dict(base), K)
    gen = build(layout, base=base).fit(ChunkDataset.from_state_dicts(layout, states, base=base), config=CONFIG)
    folder = gen.save_pretrained(tmp_path / "gen")
    assert json.loads((folder / "config.json").read_text())["base"] == json.loads(json.dumps(PinnedBase.of(base).record()))
    loaded = ChunkwiseGenerator.from_pretrained(folder, base=base)
    a = loaded.sample(generator=torch.Generator().manual_seed(0), sampler="ddim", steps=2)
    b = gen.sample(generator=torch.Generator().manual_seed(0), sampler="ddim", steps=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(BaseMismatchError, match="pass base="):
        ChunkwiseGenerator.from_pretrained(folder)
    with pytest.raises(BaseMismatchError, match=PinnedBase.of(base).sha256):
        ChunkwiseGenerator.from_pretrained(folder, base={k: v * 2 for k, v in base.items()})
    with pytest.raises(BaseMismatchError, match="'2.bias'"):
        ChunkwiseGenerator.from_pretrained(folder, base={**base, "2.bias": torch.zeros(4)})
    plain = build(layout).fit(ChunkDataset.from_state_dicts(layout, states), config=CONFIG).save_pretrained(tmp_path / "plain")
    assert "base" not in json.loads((plain / "config.json").read_text())
    with pytest.raises(BaseMismatchError, match="records no base"):
        ChunkwiseGenerator.from_pretrained(plain, base=base)


# --------------------------------------------------------------------------- positions
class ShiftTokenizer:
    """A positional tokenizer with nothing to train: latents are the rows minus their
    position (so a decoder that ignored positions would be off by exactly them)."""

    positional = True

    def __init__(self, width: int) -> None:
        self.rows, self.width = 1, width
        self.seen: list[tuple[str, list[int]]] = []

    @property
    def latent_shape(self) -> tuple[int, int]:
        return (1, self.width)

    def _shift(self, position: torch.Tensor | None, what: str) -> torch.Tensor:
        if position is None:
            raise ValueError(f"{what} needs position=")
        self.seen.append((what, position.tolist()))
        return position.float()[:, None, None]  # (B, 1, 1)

    def encode(self, x: torch.Tensor, *, mask: torch.Tensor | None = None, position: torch.Tensor | None = None) -> TokenizerOutput:
        return TokenizerOutput(latents=x - self._shift(position, "encode").to(x.device))

    def decode(self, latents: torch.Tensor, *, position: torch.Tensor | None = None) -> torch.Tensor:
        return latents + self._shift(position, "decode").to(latents.device)

    def loss(self, x: torch.Tensor, *, mask: torch.Tensor | None = None, generator: torch.Generator | None = None, position: torch.Tensor | None = None) -> TokenizerOutput:
        return TokenizerOutput(latents=x, loss=None)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass


def test_chunk_samples_carry_position_and_checkpoint():
    base, states = base_and_tunes(2)
    layout = ChunkLayout(ParamSpec.from_state_dict(base), K)
    data = ChunkDataset.from_state_dicts(layout, states)
    samples = ChunkSamples(data, ChunkStats(layout).fit_chunks(data))
    item = samples[layout.num_chunks + 2]
    assert (item["position"], item["checkpoint"], item["cond"]) == (2, 1, 2)


def test_positions_reach_a_positional_tokenizer_in_encoding_sampling_and_reconstruction():
    base, states = base_and_tunes(2)
    layout = ChunkLayout(ParamSpec.from_state_dict(base), K)
    tok = ShiftTokenizer(K)
    gen = build(layout, tokenizer=tok).fit(ChunkDataset.from_state_dicts(layout, states), config=CONFIG)
    n = layout.num_chunks
    encoded = sorted(p for what, ps in tok.seen if what == "encode" for p in ps)
    assert encoded == sorted(list(range(n)) * 2)  # every chunk of both checkpoints, by its own id
    tok.seen.clear()
    ids = torch.tensor([3, 0, 5])
    gen.sample_chunks(ids, generator=torch.Generator().manual_seed(0), sampler="ddim", steps=2)
    assert tok.seen == [("decode", [3, 0, 5])]
    inner = gen.generator
    rows = torch.randn(3, K)
    assert torch.allclose(inner.reconstruct(rows, positions=[7, 1, 2]), rows, atol=1e-6)  # shift and unshift by the same ids
    with pytest.raises(ValueError, match="positional: pass positions="):
        inner.sample_flat([0, 1], 1, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="one position per vector"):
        inner.reconstruct(rows, positions=[1, 2])


def test_positions_are_refused_by_a_tokenizer_that_takes_none():
    base, states = base_and_tunes(2)
    layout = ChunkLayout(ParamSpec.from_state_dict(base), K)
    gen = build(layout).fit(ChunkDataset.from_state_dicts(layout, states), config=CONFIG)
    assert not gen.generator.positional
    with pytest.raises(ValueError, match="not positional: drop positions="):
        gen.generator.sample_flat([0], 1, positions=[0])
    with pytest.raises(ValueError, match="not positional: drop positions="):
        gen.generator.reconstruct(torch.randn(1, K), positions=[0])


def test_reconstruct_decodes_the_posterior_mean_of_every_chunk_over_the_base(tmp_path):
    base, states = base_and_tunes(2)
    layout = ChunkLayout(ParamSpec.from_state_dict(base), K)
    data = ChunkDataset.from_state_dicts(layout, states, base=base)
    gen = build(layout, base=base).fit(data, config=CONFIG)
    rec = gen.reconstruct(data, 1, batch_size=3)
    # the same numbers, by hand: z-scored chunks of D, encoded and decoded, un-z-scored, + base
    rows = ChunkSamples(data, gen.stats)
    n = layout.num_chunks
    x = torch.cat([rows[n + c]["x"] for c in range(n)])
    ids = torch.arange(n)
    want = gen.stats.inverse_chunks(gen.generator.reconstruct(x), ids).double() + gen.base_chunks(ids)
    for i, t in enumerate(layout.tensors):
        r = layout.chunks_of(i)
        # (batches of 3 chunks against one batch: equal up to float rounding)
        assert torch.allclose(rec[t.name], want[r.start : r.stop].reshape(-1)[: t.numel].to(t.torch_dtype).reshape(t.shape), atol=1e-6, rtol=0), t.name
    with pytest.raises(IndexError):
        gen.reconstruct(data, 2)
    with pytest.raises(BaseMismatchError):
        gen.reconstruct(ChunkDataset.from_state_dicts(layout, states), 0)


def test_a_position_bias_table_starts_from_each_chunks_mean_over_the_zoo():
    from paramgen.tokenizers import PositionalVAETokenizer

    base, states = base_and_tunes(3)
    layout = ChunkLayout(ParamSpec.from_state_dict(base), K)
    data = ChunkDataset.from_state_dicts(layout, states, base=base)
    tok = PositionalVAETokenizer(width=K, num_chunks=layout.num_chunks, latent_channels=2, latent_length=4, hidden_channels=8, num_down=1, position_dim=4, position_bias=True)
    gen = build(layout, tokenizer=tok, base=base).fit(data, config=FitConfig(tokenizer_steps=0, prior_steps=1, batch_size=4, progress=False))
    rows = ChunkSamples(data, gen.stats)
    n = layout.num_chunks
    want = torch.stack([torch.stack([rows[c * n + k]["x"][0] for c in range(3)]).double().mean(0) for k in range(n)])
    assert torch.allclose(tok.bias.double(), want, atol=1e-6)
    with pytest.raises(ValueError, match="expected means of shape"):
        tok.init_position_bias(torch.zeros(1, K))


def test_task_positions_give_each_task_its_own_chunk_positions(tmp_path):
    from paramgen.pipelines.chunkwise import chunkwise

    base, states = base_and_tunes(4)
    tasks = ["a", "b", "a", "b"]
    states = [{k: v + (0.5 if t == "b" else 0.0) for k, v in sd.items()} for sd, t in zip(states, tasks, strict=True)]
    layout = ChunkLayout(ParamSpec.from_state_dict(base), K)
    data = ChunkDataset.from_state_dicts(layout, states, base=base)
    gen = chunkwise(
        layout, condition="task", tasks=["a", "b"], positional=True, position_bias=True, task_positions=True, base=base,
        latent_channels=2, latent_length=4, hidden_channels=8, num_down=1, position_dim=8, base_channels=8, channel_mults=(1,), timesteps=20,
    )  # fmt: skip
    n = layout.num_chunks
    assert gen.position_tasks == ("a", "b") and gen.generator.tokenizer.num_chunks == 2 * n
    gen.fit(data, conditions=tasks, config=FitConfig(tokenizer_steps=0, prior_steps=1, batch_size=4, progress=False))
    # each task's rows of the bias table start at that task's mean chunk
    rows = ChunkSamples(data, gen.stats)
    for t, task in enumerate(["a", "b"]):
        mine = [c for c, name in enumerate(tasks) if name == task]
        want = torch.stack([torch.stack([rows[c * n + k]["x"][0] for c in mine]).double().mean(0) for k in range(n)])
        assert torch.allclose(gen.generator.tokenizer.bias[t * n : (t + 1) * n].double(), want, atol=1e-6), task
    # positions reach the tokenizer with the task's offset: sampling and reconstruction
    seen = []
    decode = gen.generator.tokenizer.decode
    gen.generator.tokenizer.decode = lambda z, position=None: (seen.append(position.clone()), decode(z, position=position))[1]
    gen.sample_chunks([0, 1], "b", generator=torch.Generator().manual_seed(0), sampler="ddim", steps=2)
    gen.reconstruct(data, 1, cond="b")
    assert seen[0].tolist() == [n, n + 1] and seen[1].tolist() == list(range(n, 2 * n))
    del gen.generator.tokenizer.decode
    with pytest.raises(ValueError, match="one of"):
        gen.sample_chunks([0], "c")
    with pytest.raises(ValueError, match="cond="):
        gen.reconstruct(data, 1)
    loaded = ChunkwiseGenerator.from_pretrained(gen.save_pretrained(tmp_path / "g"), base=base)
    assert loaded.position_tasks == ("a", "b")
    with pytest.raises(ValueError, match="task_positions"):
        chunkwise(layout, positional=True, task_positions=True)
