"""VAE and identity tokenizers: shapes, masking, noise, predictor guidance, persistence."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from paramgen.interfaces import Tokenizer
from paramgen.tokenizers import IdentityTokenizer, VAETokenizer


def small_vae(**kw) -> VAETokenizer:
    return VAETokenizer(rows=3, width=20, latent_channels=2, latent_length=4, hidden_channels=16, num_down=1, **kw)


@pytest.mark.parametrize("tok", [small_vae(), IdentityTokenizer(rows=3, width=20)])
def test_contract_shapes(tok):
    assert isinstance(tok, Tokenizer)
    x = torch.randn(5, 3, 20)
    z = tok.encode(x).latents
    assert tuple(z.shape) == (5, *tok.latent_shape)
    assert tok.decode(z).shape == x.shape
    with pytest.raises(ValueError, match=r"\(B, 3, 20\)"):
        tok.encode(torch.randn(5, 3, 21))


def test_vae_latent_layout_rows_on_channels():
    vae = small_vae().eval()
    x = torch.randn(2, 3, 20)
    z = vae.encode(x).latents  # (2, 3 rows * 2 channels, 4)
    single = vae.encode(x[:, 1:2].expand(2, 3, 20).contiguous()).latents
    assert torch.allclose(z[:, 2:4], single[:, 2:4], atol=1e-6)  # row 1 is encoded on its own


def test_masked_reconstruction_ignores_padding():
    vae = small_vae().eval()
    x = torch.randn(4, 3, 20)
    x[:, :, 15:] = 0.0  # padding, as the vectorizers make it
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[:, 15:] = False
    out = vae.loss(x, mask=mask, generator=torch.Generator().manual_seed(0))
    # The same reparameterization by hand: the loss is the error on real entries only.
    mean, logvar = vae._moments(x)
    z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    err = (vae.decode(z) - x).pow(2)
    assert float(out.metrics["recon_mse"]) == pytest.approx(float(err[:, mask].mean()), rel=1e-5)
    assert float(out.metrics["recon_mse"]) != pytest.approx(float(err.mean()), rel=1e-3)


def test_vae_learns_to_reconstruct():
    torch.manual_seed(0)
    vae = small_vae()
    g = torch.Generator().manual_seed(0)
    data = torch.randn(8, 3, 20, generator=g)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    first = None
    for _ in range(300):
        out = vae.loss(data, generator=g)
        first = first if first is not None else float(out.metrics["recon_mse"])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    vae.eval()
    err = (vae.decode(vae.encode(data).latents) - data).pow(2).mean()
    assert err < 0.2 * first


def test_noise_only_while_training_and_seeded():
    vae = small_vae(input_noise=0.1, latent_noise=0.1)
    x = torch.randn(2, 3, 20)
    a = vae.loss(x, generator=torch.Generator().manual_seed(1)).loss
    b = vae.loss(x, generator=torch.Generator().manual_seed(1)).loss
    assert torch.equal(a, b)
    vae.eval()
    assert torch.equal(vae.encode(x).latents, vae.encode(x).latents)


def test_predictor_guided_loss():
    vae = small_vae(predictor_weight=1.0)
    predictor = nn.Sequential(nn.Flatten(), nn.Linear(60, 1), nn.Flatten(0))
    x = torch.randn(4, 3, 20)
    out = vae.loss(x, generator=torch.Generator().manual_seed(0), predictor=predictor)
    plain = vae.loss(x, generator=torch.Generator().manual_seed(0))
    assert "predictor_mse" in out.metrics and out.loss > plain.loss
    out.loss.backward()
    assert predictor[1].weight.grad is not None  # gradients flow through g(x_hat)


def test_a_predictor_the_loss_would_ignore_is_refused():
    predictor = nn.Sequential(nn.Flatten(), nn.Linear(60, 1), nn.Flatten(0))
    with pytest.raises(ValueError, match=r"got a predictor, but predictor_weight=0 would ignore it"):
        small_vae().loss(torch.randn(4, 3, 20), predictor=predictor)
    with pytest.raises(TypeError, match="predictor"):  # no loss to guide: not swallowed either
        IdentityTokenizer(rows=3, width=20).loss(torch.randn(4, 3, 20), predictor=predictor)


def test_vae_config_and_weights_roundtrip(tmp_path):
    vae = small_vae(kl_weight=1e-4).eval()
    save_file(vae.state_dict(), tmp_path / "w.safetensors")
    again = VAETokenizer.from_config(vae.config())
    again.load_state_dict(load_file(tmp_path / "w.safetensors"))
    again.eval()
    x = torch.randn(2, 3, 20)
    assert torch.equal(vae.encode(x).latents, again.encode(x).latents)
