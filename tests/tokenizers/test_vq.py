"""Gumbel-softmax VQ-VAE tokenizer (IGPG eqs. 1-2): tokens, masking, annealing, dead codes."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from paramgen.interfaces import DiscreteTokenizer, Tokenizer
from paramgen.tokenizers.vq import GumbelVQTokenizer


def small_vq(**kw) -> GumbelVQTokenizer:
    args = dict(rows=3, width=20, codebook_size=16, tokens_per_chunk=2, code_dim=4, hidden=32)
    return GumbelVQTokenizer(**{**args, **kw})


def prototype_chunks(seed: int = 1) -> torch.Tensor:
    """256 chunks of width 32 drawn from 16 prototypes + small noise, as (64, 4, 32)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(16, 32, generator=g)
    labels = torch.randint(0, 16, (256,), generator=g)
    chunks = protos[labels] + 0.05 * torch.randn(256, 32, generator=g)
    return chunks.reshape(64, 4, 32)


def test_contract_and_shapes():
    vq = small_vq()
    assert isinstance(vq, Tokenizer) and isinstance(vq, DiscreteTokenizer)
    assert vq.latent_shape == (6, 4) and vq.tokens_shape == (6,) and vq.codebook_size == 16
    x = torch.randn(5, 3, 20)
    out = vq.loss(x, generator=torch.Generator().manual_seed(0))
    assert out.latents.shape == (5, 6, 4) and out.indices.shape == (5, 6) and out.loss.ndim == 0
    assert {"recon_mse", "commitment", "codebook", "temperature", "perplexity", "codebook_usage", "dead_codes_reset"} <= set(out.metrics)
    out.loss.backward()
    for name, p in vq.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert vq.encoder[0].weight.grad.abs().sum() > 0  # the encoder learns through the relaxation
    vq.eval()
    enc = vq.encode(x)
    assert enc.latents.shape == (5, *vq.latent_shape) and enc.indices.shape == (5, *vq.tokens_shape)
    assert enc.indices.dtype == torch.long
    assert vq.decode(enc.latents).shape == x.shape and vq.decode_indices(enc.indices).shape == x.shape


@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 4),
    rows=st.integers(1, 4),
    width=st.integers(1, 24),
    codebook_size=st.integers(2, 40),
    tokens=st.integers(1, 3),
    code_dim=st.integers(1, 6),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_indices_decode_to_the_quantized_latents(seed, batch, rows, width, codebook_size, tokens, code_dim, scale):
    torch.manual_seed(seed)
    vq = GumbelVQTokenizer(
        rows=rows, width=width, codebook_size=codebook_size, tokens_per_chunk=tokens, code_dim=code_dim, hidden=8
    ).eval()
    x = scale * torch.randn(batch, rows, width, generator=torch.Generator().manual_seed(seed))
    enc = vq.encode(x)
    assert enc.indices.shape == (batch, rows * tokens) and enc.indices.dtype == torch.long
    assert int(enc.indices.min()) >= 0 and int(enc.indices.max()) < codebook_size
    assert torch.equal(enc.latents, vq.codebook[enc.indices])
    assert torch.equal(vq.decode(enc.latents), vq.decode_indices(enc.indices))
    # Each chunk is tokenized on its own: permuting chunks permutes their tokens.
    perm = torch.randperm(rows, generator=torch.Generator().manual_seed(seed))
    again = vq.encode(x[:, perm]).indices.reshape(batch, rows, tokens)
    assert torch.equal(again, enc.indices.reshape(batch, rows, tokens)[:, perm])
    # In eval mode loss() is deterministic and quantizes exactly as encode() does.
    out = vq.loss(x)
    assert torch.equal(out.indices, enc.indices) and torch.equal(out.latents, enc.latents)


def test_masked_loss_ignores_padding():
    vq = small_vq(commitment_weight=0.0, codebook_weight=0.0).eval()
    x = torch.randn(4, 3, 20)
    x[:, 2, 12:] = 0.0  # the last chunk is padded, as a ChunkVectorizer makes it
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[2, 12:] = False
    out = vq.loss(x, mask=mask)
    with torch.no_grad():
        err = (vq.decode(vq.encode(x).latents) - x).pow(2)
    assert float(out.metrics["recon_mse"]) == pytest.approx(float(err[:, mask].mean()), rel=1e-5)
    assert float(out.metrics["recon_mse"]) != pytest.approx(float(err.mean()), rel=1e-3)
    assert out.loss.item() == pytest.approx(float(out.metrics["recon_mse"]), rel=1e-6)
    batch_mask = vq.loss(x, mask=mask.expand(4, 3, 20)).loss
    assert torch.equal(batch_mask, out.loss)
    # No gradient reaches the reconstruction of padded entries.
    vq.train()
    recon_grads = []
    def keep_grad(_module, _inputs, output):
        output.register_hook(recon_grads.append)

    handle = vq.decoder.register_forward_hook(keep_grad)
    vq.loss(x, mask=mask, generator=torch.Generator().manual_seed(0)).loss.backward()
    handle.remove()
    (grad,) = recon_grads  # (B, N, C), d loss / d recon
    assert torch.all(grad[:, ~mask] == 0) and torch.all(grad[:, mask] != 0)


def test_temperature_schedules_and_saved_step():
    exp = small_vq(temperature=1.0, min_temperature=1e-4, anneal="exponential", anneal_steps=10)
    cyc = small_vq(temperature=1.0, min_temperature=1e-4, anneal="cyclical", anneal_steps=10)
    for tok in (exp, cyc):
        assert tok.temperature_at(0) == pytest.approx(1.0)
        assert tok.temperature_at(5) == pytest.approx(1e-2)  # halfway in log space
    assert exp.temperature_at(10) == pytest.approx(1e-4) and exp.temperature_at(25) == pytest.approx(1e-4)
    assert cyc.temperature_at(10) == pytest.approx(1.0) and cyc.temperature_at(15) == pytest.approx(1e-2)
    assert cyc.temperature_at(29) == pytest.approx(1e-4 ** 0.9)
    # Each training loss() call advances the schedule; eval calls do not.
    x = torch.randn(2, 3, 20)
    g = torch.Generator().manual_seed(0)
    seen = [cyc.loss(x, generator=g).metrics["temperature"] for _ in range(12)]
    assert seen == pytest.approx([cyc.temperature_at(k) for k in range(12)])
    cyc.eval()
    cyc.loss(x)
    assert int(cyc.step) == 12
    again = GumbelVQTokenizer.from_config(cyc.config())
    again.load_state_dict(cyc.state_dict())
    assert int(again.step) == 12
    assert again.train().loss(x, generator=g).metrics["temperature"] == pytest.approx(cyc.temperature_at(12))


def test_training_reconstructs_and_uses_many_codes():
    torch.manual_seed(0)
    data = prototype_chunks()
    vq = GumbelVQTokenizer(rows=4, width=32, codebook_size=64, tokens_per_chunk=2, code_dim=8, hidden=64, anneal_steps=100)
    vq.eval()
    before = float(vq.loss(data).metrics["recon_mse"])
    vq.train()
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(vq.parameters(), lr=3e-3)
    for _ in range(300):
        out = vq.loss(data, generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    vq.eval()
    after = vq.loss(data).metrics
    assert after["recon_mse"] < 0.02 * before  # noise floor is 0.0025
    # 16 prototypes x 2 tokens: many distinct codes, not a handful.
    assert after["codebook_usage"] >= 16 / 64 and after["perplexity"] > 10


def _mostly_dead(**kw) -> GumbelVQTokenizer:
    """Codes 4.. far from every encoder output: only codes 0-3 are ever chosen."""
    torch.manual_seed(0)
    vq = GumbelVQTokenizer(rows=4, width=32, codebook_size=64, tokens_per_chunk=2, code_dim=8, hidden=64, **kw)
    with torch.no_grad():
        vq.codebook[4:] += 1e3
    return vq


STEPS = 100


def test_dead_codes_are_reseeded_and_revived():
    data = prototype_chunks()
    runs = {}
    for threshold in (0.0, 1e-3):
        vq = _mostly_dead(dead_code_threshold=threshold, usage_decay=0.8)
        assert set(vq.eval().encode(data).indices.unique().tolist()) <= {0, 1, 2, 3}
        vq.train()
        g = torch.Generator().manual_seed(0)
        opt = torch.optim.Adam(vq.parameters(), lr=3e-3)
        resets = []
        for _ in range(STEPS):
            out = vq.loss(data, generator=g)
            resets.append(float(out.metrics["dead_codes_reset"]))
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        runs[threshold] = (vq.eval().loss(data).metrics, resets)
    (dead, dead_resets), (revived, revived_resets) = runs[0.0], runs[1e-3]
    assert sum(dead_resets) == 0 and dead["codebook_usage"] <= 4 / 64
    assert sum(revived_resets) >= 60  # the dead codes were re-seeded once their usage EMA fell below 1e-3
    assert revived["codebook_usage"] >= 16 / 64 and revived["perplexity"] > 2 * dead["perplexity"]
    assert revived["recon_mse"] < 0.5 * dead["recon_mse"]


def test_reseeding_copies_encoder_outputs_of_the_batch():
    vq = _mostly_dead()
    with torch.no_grad():
        vq.code_usage.zero_()
        vq.code_usage[:4] = 0.25  # history: only codes 0-3 were used
    data = prototype_chunks()
    out = vq.loss(data, generator=torch.Generator().manual_seed(0))
    assert float(out.metrics["dead_codes_reset"]) == 60.0
    z_e = vq._encode(data).detach().reshape(-1, 8)  # (T, D)
    dist = (vq.codebook.detach()[4:, None] - z_e[None]).norm(dim=-1)  # (60, T)
    assert torch.all(dist.min(dim=1).values < 1e-6)  # each revived code is some token's z_e
    assert float(out.metrics["codebook_usage"]) > 0.5  # and is picked in the same batch
    assert torch.all(vq.code_usage[4:] > 0)


def test_seeded_loss_is_reproducible():
    vq = small_vq(dead_code_threshold=0.05, usage_decay=0.5)
    other = copy.deepcopy(vq)
    x = torch.randn(6, 3, 20)
    runs = []
    for tok in (vq, other):
        g = torch.Generator().manual_seed(7)
        runs.append([tok.loss(x, generator=g) for _ in range(4)])
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a.loss, b.loss) and torch.equal(a.indices, b.indices) and a.metrics == b.metrics
    assert any(float(o.metrics["dead_codes_reset"]) > 0 for o in runs[0])  # re-seeding is covered too
    assert torch.equal(vq.codebook, other.codebook)
    different = small_vq().loss(x, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(different.loss, runs[0][0].loss)


def test_config_and_weights_roundtrip_through_safetensors(tmp_path):
    vq = small_vq(anneal="exponential", hard=True, commitment_weight=0.5)
    x = torch.randn(4, 3, 20)
    vq.loss(x, generator=torch.Generator().manual_seed(0))  # move step and usage off their initial values
    config = json.loads(json.dumps(vq.config()))
    save_file(vq.state_dict(), tmp_path / "w.safetensors")
    again = GumbelVQTokenizer.from_config(config)
    again.load_state_dict(load_file(tmp_path / "w.safetensors"))
    vq.eval(), again.eval()
    a, b = vq.encode(x), again.encode(x)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.indices, b.indices)
    assert torch.equal(vq.code_usage, again.code_usage) and int(again.step) == 1
    assert again.config() == vq.config()


def test_bad_inputs_raise():
    vq = small_vq().eval()
    with pytest.raises(ValueError, match=r"\(B, 3, 20\).*\(5, 3, 21\)"):
        vq.encode(torch.randn(5, 3, 21))
    with pytest.raises(ValueError, match=r"\(B, 3, 20\)"):
        vq.loss(torch.randn(3, 20))
    for bad in (float("nan"), float("inf")):
        x = torch.randn(2, 3, 20)
        x[1, 2, 3] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            vq.encode(x)
        with pytest.raises(ValueError, match="NaN or Inf"):
            vq.loss(x)
    with pytest.raises(ValueError, match=r"mask of shape \(3, 20\).*got \(3, 19\)"):
        vq.loss(torch.randn(2, 3, 20), mask=torch.ones(3, 19, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, 6, 4\).*\(2, 6, 5\)"):
        vq.decode(torch.randn(2, 6, 5))
    with pytest.raises(ValueError, match=r"\(B, 6\).*\(2, 3, 2\)"):
        vq.decode_indices(torch.zeros(2, 3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 16\).*\[16, 16\]"):
        vq.decode_indices(torch.full((2, 6), 16))
    with pytest.raises(ValueError, match=r"\[0, 16\).*\[-1, 0\]"):
        vq.decode_indices(torch.tensor([[0, 0, 0, 0, 0, -1]]))
    with pytest.raises(ValueError, match="integer"):
        vq.decode_indices(torch.zeros(2, 6))
    with pytest.raises(ValueError, match="anneal"):
        small_vq(anneal="linear")
    with pytest.raises(ValueError, match="dead_code_threshold"):
        small_vq(codebook_size=2048, dead_code_threshold=1e-3)
    with pytest.raises(ValueError, match="min_temperature"):
        small_vq(temperature=1e-5, min_temperature=1e-4)
    assert math.isfinite(vq.loss(torch.zeros(1, 3, 20)).loss.item())
