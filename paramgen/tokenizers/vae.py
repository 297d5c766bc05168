"""The D2NWG weight VAE (eq. 1): a beta-VAE over vectorized weights.

Each row of a `paramgen.vectorize.VectorBatch` (a whole model, a layer or a chunk)
is encoded on its own, with shared weights: a linear layer maps the flat row into a short
multi-channel signal, a 1D-convolutional encoder downsamples it to a Gaussian latent of
``latent_channels x latent_length``, and the decoder mirrors it back, ending in a linear
layer to the row width (the latent-diffusion conv VAE without discriminator, with the
linear maps in and out that D2NWG adds). The latents of a model's ``N`` rows are stacked
along channels: ``(B, N * latent_channels, latent_length)``, the shape priors work on.

Training options from the papers: a small KL weight (D2NWG: 1e-6), reconstruction masked
to real entries (padding is not learned), Gaussian noise on the input and on the latent
while training (p-diff's augmentation, also in Cond P-Diff: the decoder learns to map a
neighbourhood of each latent to the weights, which makes it robust to the prior's
sampling error), and D2NWG's predictor-guided loss (eq. 9): a frozen accuracy predictor
``g`` adds ``||g(x) - g(x_hat)||^2``.

`VAETokenizer.compression` is the capacity as one number: input values per latent value
(``width / (latent_channels * latent_length)``; 1 keeps as many latent values as weights).

Examples:
    >>> import torch
    >>> vae = VAETokenizer(rows=2, width=100, latent_channels=2, latent_length=8)
    >>> x = torch.randn(3, 2, 100)
    >>> out = vae.loss(x, generator=torch.Generator().manual_seed(0))
    >>> tuple(out.latents.shape), out.loss.ndim
    ((3, 4, 8), 0)
    >>> tuple(vae.decode(vae.encode(x).latents).shape)
    (3, 2, 100)
    >>> vae.compression  # 100 values per row into 2 x 8 latent values
    6.25
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from einops import rearrange
from torch import nn

from paramgen._random import randn
from paramgen._validate import host_values
from paramgen.interfaces import TokenizerOutput
from paramgen.registry import Configurable

__all__ = ["VAETokenizer"]


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.GroupNorm(_groups(channels), channels),
            nn.SiLU(),
            nn.Conv1d(channels, channels, 3, padding=1),
            nn.GroupNorm(_groups(channels), channels),
            nn.SiLU(),
            nn.Conv1d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


#: FiLM parameters ``(scale, shift)``, each ``(B * N, hidden_channels, 1)``: ``h * (1 + scale) + shift``.
Film = tuple[torch.Tensor, torch.Tensor]


def _trunk(stack: Iterable[nn.Module], h: torch.Tensor, film: Film | None) -> torch.Tensor:
    """Run a convolutional stack; with ``film``, modulate the hidden signal after its first
    layer (the hook a conditioned tokenizer, `paramgen.tokenizers.PositionalVAETokenizer`,
    uses; the residual blocks after it carry the modulation through)."""
    for i, layer in enumerate(stack):
        h = layer(h)
        if i == 0 and film is not None:
            scale, shift = film
            h = h * (1.0 + scale) + shift
    return h


class VAETokenizer(nn.Module, Configurable):
    """Beta-VAE over rows of vectorized weights.

    Args:
        rows: Rows per model ``N`` (from the vectorizer).
        width: Row width ``C``.
        latent_channels: Latent channels per row.
        latent_length: Latent length per row.
        hidden_channels: Width of the convolutional trunk.
        num_down: Stride-2 downsamplings between the linear input map and the latent.
        kl_weight: Weight of the KL term (D2NWG: 1e-6).
        input_noise: Std of Gaussian noise added to inputs while training (p-diff's
            input augmentation).
        latent_noise: Std of Gaussian noise added to sampled latents while training
            (p-diff's latent augmentation).
        predictor_weight: Weight of the predictor-guided loss (eq. 9) when a predictor
            is passed to `loss`.
    """

    def __init__(
        self,
        *,
        rows: int,
        width: int,
        latent_channels: int = 4,
        latent_length: int = 32,
        hidden_channels: int = 64,
        num_down: int = 2,
        kl_weight: float = 1e-6,
        input_noise: float = 0.0,
        latent_noise: float = 0.0,
        predictor_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if min(rows, width, latent_channels, latent_length, hidden_channels) < 1 or num_down < 0:
            raise ValueError("rows, width, latent_channels, latent_length, hidden_channels must be positive and num_down >= 0")
        self.rows, self.width = rows, width
        self.latent_channels, self.latent_length = latent_channels, latent_length
        self.kl_weight, self.input_noise, self.latent_noise = kl_weight, input_noise, latent_noise
        self.predictor_weight = predictor_weight
        self.signal_length = latent_length * 2**num_down  # length after the linear input map
        self.hidden_channels = h = hidden_channels
        self.stem_channels = max(1, h // 8)

        self.linear_in = nn.Linear(width, self.stem_channels * self.signal_length)
        enc: list[nn.Module] = [nn.Conv1d(self.stem_channels, h, 3, padding=1)]
        for _ in range(num_down):
            enc += [_ResBlock(h), nn.Conv1d(h, h, 4, stride=2, padding=1)]
        enc += [_ResBlock(h), nn.GroupNorm(_groups(h), h), nn.SiLU(), nn.Conv1d(h, 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv1d(latent_channels, h, 3, padding=1), _ResBlock(h)]
        for _ in range(num_down):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv1d(h, h, 3, padding=1), _ResBlock(h)]
        dec += [nn.GroupNorm(_groups(h), h), nn.SiLU(), nn.Conv1d(h, self.stem_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.linear_out = nn.Linear(self.stem_channels * self.signal_length, width)

    @property
    def latent_shape(self) -> tuple[int, int]:
        """Shape of one model's latent: ``(rows * latent_channels, latent_length)``."""
        return (self.rows * self.latent_channels, self.latent_length)

    @property
    def compression(self) -> float:
        """Input values per latent value: ``width / (latent_channels * latent_length)``
        (the same for the whole model: every row is encoded on its own)."""
        return self.width / (self.latent_channels * self.latent_length)

    # ------------------------------------------------------------------ internals
    def _check(self, x: torch.Tensor, *, values: bool = True) -> None:
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.rows, self.width):
            raise ValueError(f"expected vectorized weights of shape (B, {self.rows}, {self.width}), got {tuple(x.shape)}")
        if values and not torch.isfinite(x).all():
            raise ValueError("vectorized weights contain NaN or Inf")

    def _dtype(self) -> torch.dtype:
        """The weights' dtype: inputs are cast to it (a no-op under autocast, where the
        weights stay float32), so a tokenizer moved to bfloat16 or float64 takes float32 rows."""
        return self.linear_in.weight.dtype

    def _moments(self, x: torch.Tensor, film: Film | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        h = self.linear_in(rearrange(x, "b n c -> (b n) c"))
        h = rearrange(h, "bn (ch t) -> bn ch t", ch=self.stem_channels)  # (B*N, stem, T0)
        mean, logvar = _trunk(self.encoder, h, film).chunk(2, dim=1)  # (B*N, Cz, Tz) each
        mean = rearrange(mean, "(b n) cz tz -> b (n cz) tz", b=b)
        logvar = rearrange(logvar, "(b n) cz tz -> b (n cz) tz", b=b).clamp(-30.0, 20.0)
        return mean, logvar

    # ------------------------------------------------------------------ the verbs
    def encode(self, x: torch.Tensor, *, mask: torch.Tensor | None = None) -> TokenizerOutput:
        """Posterior means ``(B, N * latent_channels, latent_length)`` (no sampling), in the
        dtype of the weights."""
        self._check(x)
        mean, _ = self._moments(x.to(self._dtype()))
        return TokenizerOutput(latents=mean)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, N * latent_channels, latent_length)`` to rows ``(B, N, C)``, in the
        dtype of the weights."""
        self._check_latents(latents)
        return self._decode(latents)

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 3 or tuple(latents.shape[1:]) != self.latent_shape:
            raise ValueError(f"expected latents of shape (B, {self.latent_shape[0]}, {self.latent_shape[1]}), got {tuple(latents.shape)}")

    def _decode(self, latents: torch.Tensor, film: Film | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
        """`decode` without the check; ``film`` modulates the trunk, ``bias`` ``(B, N, C)``
        is added to the rows."""
        b = latents.shape[0]
        z = rearrange(latents.to(self._dtype()), "b (n cz) tz -> (b n) cz tz", n=self.rows)
        h = rearrange(_trunk(self.decoder, z, film), "bn ch t -> bn (ch t)")
        rows = rearrange(self.linear_out(h), "(b n) c -> b n c", b=b)  # (B, N, C)
        return rows if bias is None else rows + bias

    def loss(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        predictor: nn.Module | None = None,
    ) -> TokenizerOutput:
        """Masked reconstruction + ``kl_weight`` x KL (+ predictor-guided term).

        Args:
            x: Rows ``(B, N, C)`` (normalized weights).
            mask: ``(B, N, C)`` or ``(N, C)`` bool, ``True`` on real entries; padding is
                excluded from the reconstruction loss.
            generator: Randomness of the reparameterization and the noise (on the CPU
                or on ``x``'s device).
            predictor: Frozen accuracy predictor mapping rows ``(B, N, C)`` to ``(B,)``;
                needs ``predictor_weight > 0`` (else it would be ignored, and raises).
        """
        if predictor is not None and self.predictor_weight <= 0:
            raise ValueError("VAETokenizer.loss got a predictor, but predictor_weight=0 would ignore it: build the tokenizer with predictor_weight > 0")
        self._check(x, values=host_values(x))  # no per-step device sync (see paramgen._validate)
        return self._loss(x, mask=mask, generator=generator, predictor=predictor)

    def _loss(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None,
        generator: torch.Generator | None,
        predictor: nn.Module | None = None,
        encoder_film: Film | None = None,
        decoder_film: Film | None = None,
        bias: torch.Tensor | None = None,
    ) -> TokenizerOutput:
        """`loss` on checked rows; the conditioning (``encoder_film``, ``decoder_film``,
        ``bias``) is a conditioned tokenizer's (see `_decode`)."""
        x = x.to(self._dtype())
        noisy = x
        if self.training and self.input_noise > 0:
            noisy = x + self.input_noise * randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        mean, logvar = self._moments(noisy, encoder_film)
        z = mean + (0.5 * logvar).exp() * randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        if self.training and self.latent_noise > 0:
            z = z + self.latent_noise * randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        recon = self._decode(z, decoder_film, bias)
        err = (recon - x).pow(2)
        if mask is not None:
            m = mask.to(err.device).expand_as(x).to(err.dtype)
            mse = (err * m).sum() / m.sum().clamp_min(1.0)
        else:
            mse = err.mean()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        total = mse + self.kl_weight * kl
        metrics: dict[str, torch.Tensor | float] = {"recon_mse": mse.detach(), "kl": kl.detach()}
        if predictor is not None:
            guide = (predictor(recon) - predictor(x).detach()).pow(2).mean()
            total = total + self.predictor_weight * guide
            metrics["predictor_mse"] = guide.detach()
        return TokenizerOutput(latents=mean, loss=total, metrics=metrics)
