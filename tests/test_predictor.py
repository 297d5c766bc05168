"""Accuracy predictor on a real zoo and the predictor-guided VAE."""

import pytest
import torch

from paramgen import Generator, ModelVectorizer, PerLayerZScore, fit
from paramgen.predictor import AccuracyPredictor, fit_predictor
from paramgen.priors import KDEPrior
from paramgen.tokenizers import VAETokenizer
from paramgen.zoo import build_zoo, preset


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo(tmp_path_factory.mktemp("zoo"), preset("tiny"), workers=1, progress=False)


def test_predictor_ranks_real_checkpoints(zoo):
    flat, _ = zoo.flatten()
    spec = zoo.spec()
    vec = ModelVectorizer(spec)
    rows = vec.pack(PerLayerZScore(spec).fit(flat).transform(flat))
    acc = torch.tensor([c.metrics["val_acc"] for c in zoo])
    pred = AccuracyPredictor(rows=1, width=spec.numel, hidden=64)
    losses = fit_predictor(pred, rows, acc, steps=300, generator=torch.Generator().manual_seed(0))
    assert losses[-1] < 0.2 * losses[0]
    assert all(not p.requires_grad for p in pred.parameters())
    fitted = pred(rows)
    assert torch.corrcoef(torch.stack([fitted, acc]))[0, 1] > 0.9  # training fit, not a held-out claim


def test_predictor_guided_vae_in_the_generator(zoo):
    flat, _ = zoo.flatten()
    spec = zoo.spec()
    norm = PerLayerZScore(spec).fit(flat)
    vec = ModelVectorizer(spec)
    pred = AccuracyPredictor(rows=1, width=spec.numel, hidden=32)
    fit_predictor(pred, vec.pack(norm.transform(flat)), torch.tensor([c.metrics["val_acc"] for c in zoo]), steps=50)
    tok = VAETokenizer(rows=1, width=spec.numel, latent_channels=2, latent_length=8, hidden_channels=16, predictor_weight=1.0)
    gen = Generator(vectorizer=vec, tokenizer=tok, prior=KDEPrior(), normalizer=norm)
    fit(gen, flat, tokenizer_steps=5, predictor=pred, progress=False)
    assert gen.reconstruct(flat).shape == flat.shape


def test_bad_input():
    pred = AccuracyPredictor(rows=1, width=4)
    with pytest.raises(ValueError, match="one accuracy per model"):
        fit_predictor(pred, torch.zeros(3, 1, 4), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fit_predictor(pred, torch.zeros(2, 1, 4), torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match=r"\(B, 1, 4\)"):
        pred(torch.zeros(2, 4))
