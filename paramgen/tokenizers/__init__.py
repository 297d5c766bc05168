"""Tokenizers: vectorized weights to latents (or discrete tokens) and back.

Examples:
    >>> from paramgen.tokenizers import IdentityTokenizer, PositionalVAETokenizer, VAETokenizer
    >>> VAETokenizer(rows=1, width=64, latent_channels=4, latent_length=16).latent_shape
    (4, 16)
    >>> PositionalVAETokenizer(width=64, num_chunks=8, latent_channels=4, latent_length=4).compression
    4.0
"""

from paramgen.tokenizers.identity import IdentityTokenizer
from paramgen.tokenizers.positional import PositionalVAETokenizer
from paramgen.tokenizers.vae import VAETokenizer
from paramgen.tokenizers.vq import GumbelVQTokenizer

__all__ = ["GumbelVQTokenizer", "IdentityTokenizer", "PositionalVAETokenizer", "VAETokenizer"]
