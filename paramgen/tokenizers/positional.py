"""A chunk VAE that knows where each chunk sits: position-specific structure bypasses the latent.

A chunk-wise generator (`paramgen.chunkwise.ChunkwiseGenerator`) cuts a large model into
chunks and encodes each one with the same VAE. A chunk of a LayerNorm scale (values near
1) and one of a query matrix (near 0, std 0.05) then share one latent space, and whatever
distinguishes them (the mean, the scale, the structure of the tensor) must pass through
the few latent values. RPG conditions its weight tokens on a position embedding (layer and
token index) instead; this tokenizer does the same for the D2NWG chunk VAE:

- a learned embedding of the chunk's global id (``position_dim`` values) modulates the
  hidden signal of the encoder and of the decoder (FiLM: ``h * (1 + scale) + shift``, per
  channel, after each trunk's first convolution; the maps start at zero, so an untrained
  tokenizer is the plain VAE);
- optionally (``position_bias=True``) a learned table of ``width`` values per chunk, added
  to the decoded rows: the decoder can memorize each chunk's mean at the cost of as many
  parameters as it memorizes (it starts at zero).

The VAE itself is `paramgen.tokenizers.VAETokenizer` (held as ``self.vae``, with its KL
weight and p-diff's input and latent noise); the latent shape is the VAE's, so the prior
sees the same shapes.

What each part can carry: the decoder ends in a linear map from ``stem_channels x
latent_length x 2**num_down`` values (``stem_channels = hidden_channels // 8``) to the
chunk, shared by all positions. FiLM changes where in that affine subspace a chunk lands
(so the latent need not say which kind of chunk it is); only the bias table moves a chunk
outside it. Size ``hidden_channels`` so that the subspace is not the binding limit.

Every verb takes ``position``: a ``(B,)`` integer tensor (or sequence) of global chunk ids
in ``[0, num_chunks)``, one per row; it is moved to the tokenizer's device. The attribute
``positional = True`` tells `paramgen.Generator` and the training engine to pass it.

Examples:
    >>> import torch
    >>> tok = PositionalVAETokenizer(width=64, num_chunks=10, latent_channels=2, latent_length=4,
    ...                              hidden_channels=8, num_down=1, position_dim=4, position_bias=True)
    >>> x, position = torch.randn(3, 1, 64), torch.tensor([0, 4, 9])
    >>> z = tok.encode(x, position=position).latents
    >>> tuple(z.shape), tuple(tok.decode(z, position=position).shape), tok.compression
    ((3, 2, 4), (3, 1, 64), 8.0)
    >>> out = tok.loss(x, position=position, generator=torch.Generator().manual_seed(0))
    >>> out.loss.ndim
    0
    >>> tok.decode(z)
    Traceback (most recent call last):
    ...
    ValueError: PositionalVAETokenizer.decode needs position=: the (B,) global chunk ids of the rows
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from paramgen._validate import host_values
from paramgen.interfaces import TokenizerOutput
from paramgen.registry import Configurable
from paramgen.tokenizers.vae import Film, VAETokenizer

__all__ = ["PositionalVAETokenizer"]


class PositionalVAETokenizer(nn.Module, Configurable):
    """A beta-VAE over chunks ``(B, 1, width)`` conditioned on each chunk's position.

    Args:
        width: Values per chunk (the layout's ``chunk_size``).
        num_chunks: Chunks of the layout: positions are ids in ``[0, num_chunks)``.
        latent_channels: Latent channels.
        latent_length: Latent length.
        hidden_channels: Width of the convolutional trunk.
        num_down: Stride-2 downsamplings between the linear input map and the latent.
        position_dim: Size of the learned position embedding that modulates encoder and
            decoder (0: none, then ``position_bias`` must be on).
        position_bias: Add a learned ``(num_chunks, width)`` table (initially zero) to the
            decoded rows.
        kl_weight: Weight of the KL term (D2NWG: 1e-6).
        input_noise: Std of Gaussian noise added to inputs while training (p-diff).
        latent_noise: Std of Gaussian noise added to sampled latents while training (p-diff).

    Attributes:
        vae: The `VAETokenizer` over one row of ``width`` values.
        positional: ``True``: the verbs take ``position=``.
    """

    positional: ClassVar[bool] = True
    rows: int = 1

    def __init__(
        self,
        *,
        width: int,
        num_chunks: int,
        latent_channels: int = 4,
        latent_length: int = 32,
        hidden_channels: int = 64,
        num_down: int = 2,
        position_dim: int = 64,
        position_bias: bool = False,
        kl_weight: float = 1e-6,
        input_noise: float = 0.0,
        latent_noise: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(num_chunks, bool) or not isinstance(num_chunks, int) or num_chunks < 1:
            raise ValueError(f"PositionalVAETokenizer: num_chunks must be a positive integer, got {num_chunks!r}")
        if isinstance(position_dim, bool) or not isinstance(position_dim, int) or position_dim < 0:
            raise ValueError(f"PositionalVAETokenizer: position_dim must be an integer >= 0, got {position_dim!r}")
        if position_dim == 0 and not position_bias:
            raise ValueError("PositionalVAETokenizer: position_dim=0 without position_bias conditions on nothing; use VAETokenizer")
        # The VAE first: under one seed its initialization is a plain VAETokenizer's.
        self.vae = VAETokenizer(
            rows=1, width=width, latent_channels=latent_channels, latent_length=latent_length, hidden_channels=hidden_channels,
            num_down=num_down, kl_weight=kl_weight, input_noise=input_noise, latent_noise=latent_noise,
        )  # fmt: skip
        self.width, self.num_chunks, self.position_dim = width, num_chunks, position_dim
        self.embedding: nn.Embedding | None = None
        self.encoder_film: nn.Linear | None = None
        self.decoder_film: nn.Linear | None = None
        if position_dim:
            self.embedding = nn.Embedding(num_chunks, position_dim)  # (num_chunks, P), N(0, 1)
            self.encoder_film = nn.Linear(position_dim, 2 * hidden_channels)
            self.decoder_film = nn.Linear(position_dim, 2 * hidden_channels)
            for film in (self.encoder_film, self.decoder_film):  # zero: the untrained tokenizer is the plain VAE
                nn.init.zeros_(film.weight)
                nn.init.zeros_(film.bias)
        self.bias: nn.Parameter | None
        if position_bias:
            self.bias = nn.Parameter(torch.zeros(num_chunks, width))  # (num_chunks, C): memorized chunk means
        else:
            self.register_parameter("bias", None)

    @torch.no_grad()
    def init_position_bias(self, means: torch.Tensor) -> None:
        """Set the bias table to ``means`` ``(num_chunks, width)`` (each chunk's mean over the
        training rows, in the rows' scale): a closed-form start, so that the latent carries
        only each checkpoint's deviation from the start of training instead of waiting for
        a table of ``num_chunks x width`` values to be learned at the tokenizer's learning
        rate (each row sees a gradient only when its chunk is in the batch).

        Raises:
            ValueError: The tokenizer has no bias table, or ``means`` has another shape or
                non-finite values.
        """
        if self.bias is None:
            raise ValueError("PositionalVAETokenizer.init_position_bias: this tokenizer has no bias table (position_bias=False)")
        if tuple(means.shape) != tuple(self.bias.shape):
            raise ValueError(f"PositionalVAETokenizer.init_position_bias: expected means of shape {tuple(self.bias.shape)}, got {tuple(means.shape)}")
        if not torch.isfinite(means).all():
            raise ValueError("PositionalVAETokenizer.init_position_bias: the means hold NaN or Inf")
        self.bias.copy_(means.to(self.bias.device, self.bias.dtype))

    @property
    def latent_shape(self) -> tuple[int, int]:
        """Shape of one chunk's latent: ``(latent_channels, latent_length)``."""
        return self.vae.latent_shape

    @property
    def compression(self) -> float:
        """Input values per latent value: ``width / (latent_channels * latent_length)``."""
        return self.vae.compression

    # ------------------------------------------------------------------ internals
    def _position(self, position: torch.Tensor | Sequence[int] | None, b: int, verb: str, *, check: bool = True) -> torch.Tensor:
        """``(B,)`` long ids on the tokenizer's device, checked against ``num_chunks``."""
        if position is None:
            raise ValueError(f"PositionalVAETokenizer.{verb} needs position=: the (B,) global chunk ids of the rows")
        pos = position if isinstance(position, torch.Tensor) else torch.as_tensor(list(position))
        if pos.is_floating_point() or pos.is_complex() or pos.dtype == torch.bool:
            raise TypeError(f"PositionalVAETokenizer.{verb}: position must hold integer chunk ids, got {pos.dtype}")
        if tuple(pos.shape) != (b,):
            raise ValueError(f"PositionalVAETokenizer.{verb}: expected position of shape ({b},), one chunk id per row, got {tuple(pos.shape)}")
        # The range check reads the ids: done on the host, and on an accelerator only outside
        # the training loss (no per-step device sync; see paramgen._validate).
        if b and (check or host_values(pos)) and (int(pos.min()) < 0 or int(pos.max()) >= self.num_chunks):
            raise ValueError(f"PositionalVAETokenizer.{verb}: chunk ids must lie in [0, {self.num_chunks}), got {int(pos.min())}..{int(pos.max())}")
        return pos.to(self.vae.linear_in.weight.device, torch.long)

    def _film(self, layer: nn.Linear | None, pos: torch.Tensor) -> Film | None:
        if layer is None:
            return None
        assert self.embedding is not None
        scale, shift = layer(self.embedding(pos)).unsqueeze(-1).chunk(2, dim=1)  # (B, h, 1) each
        return scale, shift

    def _bias(self, pos: torch.Tensor) -> torch.Tensor | None:
        return None if self.bias is None else self.bias[pos].unsqueeze(1)  # (B, 1, C)

    # ------------------------------------------------------------------ the verbs
    def encode(
        self, x: torch.Tensor, *, mask: torch.Tensor | None = None, position: torch.Tensor | Sequence[int] | None = None
    ) -> TokenizerOutput:
        """Posterior means ``(B, latent_channels, latent_length)`` of chunks ``(B, 1, width)``
        at ``position`` ``(B,)``, in the dtype of the weights."""
        self.vae._check(x)
        pos = self._position(position, x.shape[0], "encode")
        mean, _ = self.vae._moments(x.to(self.vae._dtype()), self._film(self.encoder_film, pos))
        return TokenizerOutput(latents=mean)

    def decode(self, latents: torch.Tensor, *, position: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        """Latents ``(B, latent_channels, latent_length)`` to chunks ``(B, 1, width)`` at
        ``position`` ``(B,)``, in the dtype of the weights."""
        self.vae._check_latents(latents)
        pos = self._position(position, latents.shape[0], "decode")
        return self.vae._decode(latents, self._film(self.decoder_film, pos), self._bias(pos))

    def loss(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        position: torch.Tensor | Sequence[int] | None = None,
    ) -> TokenizerOutput:
        """Masked reconstruction + ``kl_weight`` x KL, as `VAETokenizer.loss`, with the
        encoder and decoder conditioned on ``position``.

        Args:
            x: Chunks ``(B, 1, width)`` (normalized weights).
            mask: ``(B, 1, width)`` or ``(1, width)`` bool, ``True`` on real entries.
            generator: Randomness of the reparameterization and the noise.
            position: ``(B,)`` global chunk ids.
        """
        self.vae._check(x, values=host_values(x))  # no per-step device sync (see paramgen._validate)
        pos = self._position(position, x.shape[0], "loss", check=False)
        return self.vae._loss(
            x, mask=mask, generator=generator, encoder_film=self._film(self.encoder_film, pos),
            decoder_film=self._film(self.decoder_film, pos), bias=self._bias(pos),
        )  # fmt: skip
