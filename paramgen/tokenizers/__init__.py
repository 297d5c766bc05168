"""Tokenizers: vectorized weights to latents (or discrete tokens) and back.

Examples:
    >>> from paramgen.tokenizers import IdentityTokenizer, VAETokenizer
    >>> VAETokenizer(rows=1, width=64, latent_channels=4, latent_length=16).latent_shape
    (4, 16)
"""

from paramgen.tokenizers.identity import IdentityTokenizer
from paramgen.tokenizers.vae import VAETokenizer
from paramgen.tokenizers.vq import GumbelVQTokenizer

__all__ = ["GumbelVQTokenizer", "IdentityTokenizer", "VAETokenizer"]
