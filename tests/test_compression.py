"""Compression as a knob: values per latent value, from the tokenizers to pipelines.chunkwise
(derived latent length, errors naming the valid values, the log, the saved config)."""

from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from paramgen.chunks import ChunkDataset, ChunkLayout
from paramgen.chunkwise import ChunkwiseGenerator
from paramgen.pipelines import chunkwise
from paramgen.pipelines.chunkwise import DEFAULT_LATENT_LENGTH, latent_length_for
from paramgen.spec import ParamSpec
from paramgen.tokenizers import PositionalVAETokenizer, VAETokenizer
from paramgen.training import FitConfig

NET = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))  # 64 + 8 + 32 + 4 = 108 weights
LAYOUT = ChunkLayout(ParamSpec.from_module(NET), 32)  # 2 + 1 + 1 + 1 = 5 chunks
SMALL = dict(hidden_channels=8, base_channels=8, timesteps=10)


@settings(max_examples=30)
@given(latent_channels=st.integers(1, 8), latent_length=st.integers(1, 64), factor=st.integers(1, 16))
def test_the_latent_length_of_a_compression_is_exact(latent_channels, latent_length, factor):
    """A chunk of C * L * f values at compression f has latent length L; the tokenizer reports f back."""
    chunk = latent_channels * latent_length * factor
    assert latent_length_for(chunk, latent_channels, factor) == latent_length
    assert latent_length_for(chunk, latent_channels, chunk / (latent_channels * latent_length)) == latent_length
    tok = VAETokenizer(rows=1, width=chunk, latent_channels=latent_channels, latent_length=latent_length, hidden_channels=8, num_down=0)
    assert tok.compression == factor


def test_fractional_compressions_and_the_errors_name_the_valid_values():
    assert latent_length_for(100, 4, 12.5) == 2  # 100 values into 4 x 2
    assert latent_length_for(4096, 4, 4096 / 12) == 3  # a ratio written as a float
    with pytest.raises(ValueError, match=r"latent length of 4.8, not a whole number.*latent_length 1..24, the whole ones 1, 2, 3, 4, 6, 8, 12, 24$"):
        latent_length_for(96, 4, 5)
    with pytest.raises(ValueError, match="latent length of 0.5"):
        latent_length_for(96, 4, 48)  # more than a whole chunk per latent channel value
    for bad in (0.5, 0, -2, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="compression .* must be a finite number >= 1"):
            latent_length_for(96, 4, bad)


@pytest.mark.parametrize(("compression", "length"), [(1, 8), (2, 4), (8, 1)])
def test_chunkwise_derives_the_latent_length_and_logs_the_compression(compression, length, caplog):
    with caplog.at_level(logging.INFO, logger="paramgen.pipelines"):
        gen = chunkwise(LAYOUT, compression=compression, **SMALL)
    tok = gen.generator.tokenizer
    assert type(tok) is VAETokenizer and tok.latent_shape == (4, length) and tok.compression == compression
    assert gen.generator.prior.shape == (4, length)
    assert compression > 1 or tok.latent_channels * tok.latent_length == LAYOUT.chunk_size  # 1x: as many latent values as weights
    assert [r.name for r in caplog.records] == ["paramgen.pipelines"]
    assert f"{compression:.4g} values per latent value" in caplog.records[0].getMessage()


def test_chunkwise_defaults_are_unchanged():
    tok = chunkwise(LAYOUT, **SMALL).generator.tokenizer
    assert type(tok) is VAETokenizer and tok.latent_length == DEFAULT_LATENT_LENGTH == 32 and tok.compression == 32 / (4 * 32)
    assert chunkwise(LAYOUT, latent_length=8, **SMALL).generator.tokenizer.latent_length == 8


def test_chunkwise_refuses_what_it_would_ignore_or_cannot_build():
    with pytest.raises(ValueError, match="latent_length= or compression="):
        chunkwise(LAYOUT, compression=2, latent_length=4, **SMALL)
    with pytest.raises(ValueError, match=r"valid compressions .* the whole ones 1, 2, 4, 8"):
        chunkwise(LAYOUT, compression=3, **SMALL)
    with pytest.raises(ValueError, match="position_bias=True is an option of the positional tokenizer"):
        chunkwise(LAYOUT, position_bias=True, **SMALL)
    ready = VAETokenizer(rows=1, width=32, latent_channels=2, latent_length=4, hidden_channels=8, num_down=1)
    for option in ({"compression": 2}, {"positional": True}):
        with pytest.raises(ValueError, match="a tokenizer= passed in is used as it is"):
            chunkwise(LAYOUT, tokenizer=ready, **option, **SMALL)


def test_chunkwise_builds_the_positional_tokenizer(caplog):
    with caplog.at_level(logging.INFO, logger="paramgen.pipelines"):
        gen = chunkwise(LAYOUT, positional=True, position_bias=True, compression=4, position_dim=8, cond_dim=8, **SMALL)
    tok = gen.generator.tokenizer
    assert type(tok) is PositionalVAETokenizer and gen.generator.positional
    assert (tok.num_chunks, tok.width, tok.position_dim, tok.bias.shape) == (LAYOUT.num_chunks, 32, 8, (5, 32))
    assert tok.latent_shape == (4, 2) and tok.compression == 4
    assert "positions of 5 chunks" in caplog.records[0].getMessage()


def test_the_compression_is_in_the_saved_config(tmp_path):
    """The tokenizer's recorded width, latent channels and length fix it; a saved and loaded
    generator reports the same compression."""
    data = ChunkDataset.from_state_dicts(LAYOUT, [NET.state_dict()])
    for options in ({}, {"positional": True, "position_bias": True}):
        gen = chunkwise(data, compression=2, position_dim=8, cond_dim=8, **SMALL, **options)
        gen.fit(data, config=FitConfig(tokenizer_steps=1, prior_steps=1, batch_size=5, progress=False))
        gen.save_pretrained(tmp_path / str(len(options)))
        again = ChunkwiseGenerator.from_pretrained(tmp_path / str(len(options)))
        config = again.generator.tokenizer.config()
        assert (config["width"], config["latent_channels"], config["latent_length"]) == (32, 4, 4)
        assert type(again.generator.tokenizer) is type(gen.generator.tokenizer) and again.generator.tokenizer.compression == 2


def test_chunkwise_takes_the_base_of_a_dataset_source():
    from paramgen.base import PinnedBase

    torch.manual_seed(0)
    base = {k: v + 1.0 for k, v in NET.state_dict().items()}
    data = ChunkDataset.from_state_dicts(LAYOUT, [NET.state_dict()], base=base)
    assert chunkwise(data, **SMALL).base.sha256 == PinnedBase.of(base).sha256
    assert chunkwise(LAYOUT, base=base, **SMALL).base.sha256 == PinnedBase.of(base).sha256
    assert chunkwise(LAYOUT, **SMALL).base is None
