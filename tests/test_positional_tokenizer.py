"""PositionalVAETokenizer: the tokenizer contract, position conditioning, compression,
dtypes and devices, and persistence through the registry."""

from __future__ import annotations

import json

import pytest
import torch
from fake_device import FAKE, fake_device, tensors_in
from safetensors.torch import load_file, save_file

from paramgen.interfaces import Tokenizer
from paramgen.registry import registry
from paramgen.tokenizers import PositionalVAETokenizer, VAETokenizer

SMALL = dict(width=24, latent_channels=2, latent_length=3, hidden_channels=8, num_down=1)


def small(**kw) -> PositionalVAETokenizer:
    return PositionalVAETokenizer(num_chunks=6, **(SMALL | {"position_dim": 4} | kw))


def _perturbed(tok: PositionalVAETokenizer, seed: int = 0) -> PositionalVAETokenizer:
    """Non-zero FiLM maps and bias (they start at zero), so the position path does something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        films = [] if tok.encoder_film is None else [tok.encoder_film.weight, tok.decoder_film.weight]
        for p in [*films, tok.bias]:
            if p is not None:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return tok


def _pos(*ids: int) -> torch.Tensor:
    return torch.tensor(ids)


# ------------------------------------------------------------------ contract and shapes
def test_contract_shapes_and_errors():
    tok = small(position_bias=True)
    assert isinstance(tok, Tokenizer) and tok.positional and (tok.rows, tok.width) == (1, 24)
    x = torch.randn(5, 1, 24)
    pos = _pos(0, 1, 2, 3, 5)
    z = tok.encode(x, position=pos).latents
    assert tuple(z.shape) == (5, *tok.latent_shape) == (5, 2, 3)
    assert tok.decode(z, position=pos).shape == x.shape
    assert tok.decode(z, position=[0, 1, 2, 3, 5]).shape == x.shape  # a plain sequence of ids
    with pytest.raises(ValueError, match=r"\(B, 1, 24\)"):
        tok.encode(torch.randn(5, 1, 25), position=pos)
    with pytest.raises(ValueError, match=r"needs position="):
        tok.encode(x)
    with pytest.raises(ValueError, match=r"needs position="):
        tok.loss(x)
    with pytest.raises(ValueError, match=r"expected position of shape \(5,\)"):
        tok.decode(z, position=_pos(0, 1))
    with pytest.raises(ValueError, match=r"must lie in \[0, 6\), got 0..6"):
        tok.decode(z, position=_pos(0, 1, 2, 3, 6))
    with pytest.raises(ValueError, match=r"must lie in \[0, 6\)"):
        tok.loss(x, position=_pos(-1, 1, 2, 3, 4))  # checked in the loss too (ids on the host)
    with pytest.raises(TypeError, match="integer chunk ids"):
        tok.decode(z, position=torch.zeros(5))
    with pytest.raises(ValueError, match="conditions on nothing"):
        small(position_dim=0, position_bias=False)


@pytest.mark.parametrize(("latent_channels", "latent_length", "expected"), [(2, 3, 4.0), (4, 6, 1.0), (1, 1, 24.0), (5, 2, 2.4)])
def test_compression_is_values_per_latent_value(latent_channels, latent_length, expected):
    tok = small(latent_channels=latent_channels, latent_length=latent_length)
    assert tok.compression == expected == tok.vae.compression
    assert tok.compression == 24 / tok.encode(torch.randn(2, 1, 24), position=_pos(0, 1)).latents[0].numel()
    assert VAETokenizer(rows=3, width=24, latent_channels=latent_channels, latent_length=latent_length).compression == expected


def test_an_untrained_tokenizer_is_the_plain_vae():
    """FiLM maps and the bias start at zero, and the VAE is built first under one seed."""
    torch.manual_seed(3)
    tok = small(position_bias=True).eval()
    torch.manual_seed(3)
    vae = VAETokenizer(rows=1, **SMALL).eval()
    x = torch.randn(4, 1, 24)
    pos = _pos(0, 2, 4, 5)
    assert torch.equal(tok.encode(x, position=pos).latents, vae.encode(x).latents)
    z = torch.randn(4, 2, 3)
    assert torch.equal(tok.decode(z, position=pos), vae.decode(z))


@pytest.mark.parametrize("options", [{"position_dim": 4}, {"position_dim": 4, "position_bias": True}, {"position_dim": 0, "position_bias": True}])
def test_position_changes_the_decoding(options):
    tok = _perturbed(small(**options)).eval()
    z = torch.randn(1, 2, 3).expand(6, 2, 3)  # one latent, every position
    rows = tok.decode(z, position=torch.arange(6))
    assert not torch.allclose(rows[0], rows[1], atol=1e-4)
    x = torch.randn(1, 1, 24).expand(2, 1, 24)
    if options["position_dim"]:  # the encoder is conditioned too (the bias acts on the decoder only)
        a, b = tok.encode(x, position=_pos(0, 3)).latents
        assert not torch.allclose(a, b, atol=1e-4)


def _fit(tok, x, pos, steps: int) -> float:
    """Train ``tok`` on chunks ``x`` at positions ``pos``; the final reconstruction MSE (eval)."""
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(tok.parameters(), lr=3e-2)
    kw = {"position": pos} if getattr(tok, "positional", False) else {}
    for _ in range(steps):
        out = tok.loss(x, generator=g, **kw)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    tok.eval()
    with torch.no_grad():
        return float((tok.decode(tok.encode(x, **kw).latents, **kw) - x).pow(2).mean())


def test_position_carries_what_the_latent_cannot():
    """Chunks = a fixed pattern per position + a little noise, through a 1-value latent (24x):
    the position-conditioned tokenizers recover the patterns, the plain VAE cannot.

    The decoder's last map is linear from ``stem_channels * latent_length * 2**num_down``
    values (here 2 * 1 * 4 = 8 >= 6 patterns): FiLM moves the output inside that subspace,
    the bias table outside it."""
    g = torch.Generator().manual_seed(1)
    patterns = torch.randn(6, 24, generator=g)  # (positions, width)
    pos = torch.arange(6).repeat(4)  # (24,)
    x = (patterns[pos] + 0.05 * torch.randn(24, 24, generator=g))[:, None]  # (24, 1, 24)
    options = dict(width=24, latent_channels=1, latent_length=1, hidden_channels=16, num_down=2)
    torch.manual_seed(0)
    plain = _fit(VAETokenizer(rows=1, **options), x, pos, 50)
    torch.manual_seed(0)
    film = _fit(PositionalVAETokenizer(num_chunks=6, position_dim=8, **options), x, pos, 50)
    torch.manual_seed(0)
    bias = _fit(PositionalVAETokenizer(num_chunks=6, position_dim=0, position_bias=True, **options), x, pos, 50)
    assert plain > 0.3  # five of six patterns cannot pass through one latent value
    assert film < 0.3 * plain and bias < 0.3 * plain, (plain, film, bias)


# ------------------------------------------------------------------ training options
def test_noise_only_while_training_and_seeded():
    tok = small(input_noise=0.1, latent_noise=0.1)
    x, pos = torch.randn(3, 1, 24), _pos(0, 1, 2)
    a = tok.loss(x, position=pos, generator=torch.Generator().manual_seed(1)).loss
    b = tok.loss(x, position=pos, generator=torch.Generator().manual_seed(1)).loss
    c = tok.loss(x, position=pos, generator=torch.Generator().manual_seed(2)).loss
    assert torch.equal(a, b) and not torch.equal(a, c)
    # The noise acts: the loss differs from a tokenizer without it (same weights).
    quiet = small()
    quiet.load_state_dict(tok.state_dict())
    assert not torch.equal(a, quiet.loss(x, position=pos, generator=torch.Generator().manual_seed(1)).loss)
    tok.eval()
    assert torch.equal(tok.encode(x, position=pos).latents, tok.encode(x, position=pos).latents)


@pytest.mark.parametrize("noise", ["input_noise", "latent_noise"])
@pytest.mark.parametrize("kind", ["vae", "positional"])
def test_each_pdiff_noise_acts_while_training_only(kind, noise):
    """p-diff's augmentation: noise on the input, or on the sampled latent, changes the
    training loss (same weights, same draws: only the noise's scale differs) and nothing in
    eval mode."""
    torch.manual_seed(0)
    build = (lambda **kw: VAETokenizer(rows=1, **SMALL, **kw)) if kind == "vae" else small
    noisy, quiet = build(**{noise: 0.5}), build(**{noise: 1e-9})
    quiet.load_state_dict(noisy.state_dict())
    x, kw = torch.randn(3, 1, 24), ({} if kind == "vae" else {"position": _pos(0, 1, 2)})

    def loss(tok):
        return tok.loss(x, generator=torch.Generator().manual_seed(0), **kw).loss.detach()

    assert float((loss(noisy) - loss(quiet)).abs()) > 1e-3
    noisy.eval(), quiet.eval()
    assert torch.equal(loss(noisy), loss(quiet))


def test_masked_loss_and_gradients_reach_the_position_parameters():
    tok = _perturbed(small(position_bias=True, kl_weight=0.0))
    x, pos = torch.randn(4, 1, 24), _pos(0, 1, 1, 5)
    mask = torch.ones(1, 24, dtype=torch.bool)
    mask[:, 20:] = False
    out = tok.loss(x, mask=mask, position=pos, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert set(out.metrics) == {"recon_mse", "kl"}
    assert tok.embedding.weight.grad[[0, 1, 5]].abs().sum() > 0 and tok.embedding.weight.grad[[2, 3, 4]].abs().sum() == 0
    assert tok.bias.grad[:, 20:].abs().sum() == 0  # padding is not learned
    assert tok.bias.grad[1, :20].abs().sum() > 0 and tok.bias.grad[2].abs().sum() == 0


# ------------------------------------------------------------------ dtypes and devices
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-4), (torch.bfloat16, 0.1), (torch.float16, 0.02)], ids=str)
def test_runs_in_its_dtype(dtype, tol):
    def run(dtype):
        torch.manual_seed(0)
        tok = _perturbed(small(position_bias=True)).to(dtype=dtype).eval()
        x = torch.randn(3, 1, 24, generator=torch.Generator().manual_seed(1))
        pos = _pos(0, 2, 5)
        with torch.no_grad():
            return tok.encode(x, position=pos).latents, tok.decode(torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(2)), position=pos)

    for out, ref in zip(run(dtype), run(torch.float32), strict=True):
        assert out.dtype == dtype and out.shape == ref.shape
        assert float((out.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1.0)) <= tol


@pytest.mark.parametrize("generator", ["cpu", None])
def test_tensors_follow_the_device(generator):
    """As tests/test_device_contract.py: ids given on the CPU are moved, noise is drawn on the device."""
    torch.manual_seed(0)
    g = None if generator is None else torch.Generator().manual_seed(0)
    with fake_device() as dev:
        tok = small(position_bias=True, input_noise=0.1, latent_noise=0.1).to(dev)
        x = torch.randn(3, 1, 24).to(dev)
        pos = _pos(0, 4, 5)  # on the CPU
        enc = tok.encode(x, position=pos)
        rows = tok.decode(enc.latents, position=pos.to(dev))
        out = tok.train().loss(x, mask=torch.ones(1, 24, dtype=torch.bool).to(dev), position=pos.to(dev), generator=g)
        outputs = tensors_in((enc, rows, out))
    assert outputs and all(t.device == FAKE for t in outputs)


# ------------------------------------------------------------------ persistence
def test_registry_round_trip(tmp_path):
    tok = _perturbed(small(position_bias=True, kl_weight=1e-4, input_noise=0.01)).eval()
    name = registry.name_of(tok)
    assert name == "positional-vae"
    config = json.loads(json.dumps(tok.config()))
    assert config["num_chunks"] == 6 and config["position_bias"] is True
    save_file(tok.state_dict(), tmp_path / "w.safetensors")
    again = registry.build(name, config)
    again.load_state_dict(load_file(tmp_path / "w.safetensors"))
    again.eval()
    x, pos = torch.randn(2, 1, 24), _pos(1, 5)
    assert torch.equal(tok.decode(tok.encode(x, position=pos).latents, position=pos), again.decode(again.encode(x, position=pos).latents, position=pos))
    assert again.compression == tok.compression


def test_saved_in_a_generator_folder(tmp_path):
    from paramgen import Generator, ModelVectorizer, ParamSpec
    from paramgen.priors import KDEPrior

    tok = _perturbed(small(position_bias=True)).eval()
    gen = Generator(vectorizer=ModelVectorizer(ParamSpec.from_state_dict({"chunk": torch.zeros(24)})), tokenizer=tok, prior=KDEPrior())
    gen.prior.fit(torch.randn(4, *tok.latent_shape), None)
    gen.fitted = True  # persistence only: the tokenizer is not trained
    gen.save_pretrained(tmp_path / "gen")
    again = Generator.from_pretrained(tmp_path / "gen")
    assert isinstance(again.tokenizer, PositionalVAETokenizer)
    assert again.tokenizer.config() == tok.config()
    for k, v in tok.state_dict().items():
        assert torch.equal(v, again.tokenizer.state_dict()[k]), k
