"""IGPG's Gumbel-softmax VQ-VAE over weight chunks (eqs. 1-2).

Each row of a `paramgen.vectorize.VectorBatch` (a chunk of ``C`` weights) is
encoded on its own, with shared weights, into ``l = tokens_per_chunk`` discrete tokens
from a codebook of ``codebook_size`` vectors of dimension ``code_dim``:

``chunk (C) --MLP--> z_e (l, code_dim) --Gumbel-softmax over codes--> z_q (l, code_dim)
--MLP--> chunk (C)``

The encoder output ``z_e`` of each token is rescaled to norm ``sqrt(code_dim)`` (unit
RMS), and its logit for code ``j`` is ``pi_j = -||z_e - e_j||^2``: the noise-free hard
choice is the nearest code, as in a plain VQ-VAE, and a re-seeded code (below) is picked
at once by the encoder output it was copied from. The fixed norm matters: Gumbel noise
has unit scale, so encoder outputs free to shrink (which the commitment term encourages
once few codes are in use) make the token choice random, at any temperature. Training
draws ``y = softmax((pi + g) / tau)`` with Gumbel noise ``g`` (eq. 1) and decodes
``z_q = y @ codebook``; with ``hard=True`` the forward pass uses the one-hot
``argmax y`` with the soft ``y``'s gradient (straight through). In eval mode there is no
noise and the choice is hard: latents are exactly ``codebook[indices]``.

The loss is eq. 2: reconstruction MSE on real entries only (padding is masked out) +
``commitment_weight * ||z_e - sg[z_q]||^2`` + ``codebook_weight * ||sg[z_e] - z_q||^2``
(means over tokens and code dimensions), where ``z_e`` is the normalized encoder output
above (the continuous point before quantization, not the soft expected code). In the
codebook term the code weights ``y`` are stopped too, so that term moves only the
codebook and the commitment term moves only the encoder.

The temperature ``tau`` is annealed with the number of training ``loss`` calls (a
buffer, saved with the weights) from ``temperature`` towards ``min_temperature``
exponentially over ``anneal_steps``, once or cyclically (IGPG: 1 to 1e-4, cyclical).

Dead codes: the codebook of a VQ-VAE dies quietly (a few codes win every token). An EMA
of each code's share of the tokens is kept (a buffer); on every training ``loss`` call,
codes whose share is below ``dead_code_threshold`` are re-seeded with encoder outputs
``z_e`` of randomly drawn tokens of the batch (drawn with the call's ``generator``), and
their share is reset to the uniform ``1 / codebook_size`` so they get time to be used.
``metrics["dead_codes_reset"]`` counts them. Re-seeding revives a partly dead codebook;
it cannot undo a total collapse that lasted long enough for the encoder to map every
chunk near the one live code (copies of those outputs are all alike): keep the usage
EMA short enough (``usage_decay``) to act before that.

Examples:
    >>> import torch
    >>> vq = GumbelVQTokenizer(rows=3, width=16, codebook_size=32, tokens_per_chunk=2, code_dim=4, hidden=32)
    >>> x = torch.randn(5, 3, 16)
    >>> out = vq.loss(x, generator=torch.Generator().manual_seed(0))
    >>> out.loss.ndim, sorted(out.metrics)[:3]
    (0, ['codebook', 'codebook_usage', 'commitment'])
    >>> enc = vq.eval().encode(x)
    >>> tuple(enc.latents.shape), tuple(enc.indices.shape), vq.latent_shape
    ((5, 6, 4), (5, 6), (6, 4))
    >>> torch.equal(vq.decode(enc.latents), vq.decode_indices(enc.indices))
    True
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from paramgen._random import rand, randint, randperm
from paramgen._validate import host_values
from paramgen.interfaces import TokenizerOutput
from paramgen.registry import Configurable

__all__ = ["GumbelVQTokenizer"]


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, hidden),
        nn.LayerNorm(hidden),
        nn.SiLU(),
        nn.Linear(hidden, hidden),
        nn.LayerNorm(hidden),
        nn.SiLU(),
        nn.Linear(hidden, d_out),
    )


class GumbelVQTokenizer(nn.Module, Configurable):
    """Gumbel-softmax VQ-VAE mapping each chunk to ``tokens_per_chunk`` codebook tokens.

    Args:
        rows: Chunks per model ``N`` (from the vectorizer).
        width: Chunk width ``C``.
        codebook_size: Number of codes ``m``.
        tokens_per_chunk: Tokens per chunk ``l``.
        code_dim: Dimension of a code vector.
        hidden: Width of the encoder and decoder MLPs.
        commitment_weight: Weight of ``||z_e - sg[z_q]||^2`` (IGPG's gamma).
        codebook_weight: Weight of ``||sg[z_e] - z_q||^2`` (IGPG's beta).
        temperature: Gumbel-softmax temperature at the start of each annealing cycle.
        min_temperature: Temperature reached after ``anneal_steps`` training steps.
        anneal: ``"exponential"`` decays once and stays at ``min_temperature``;
            ``"cyclical"`` restarts the decay every ``anneal_steps``.
        anneal_steps: Length of one decay, in training ``loss`` calls.
        dead_code_threshold: Codes whose EMA share of the tokens falls below this are
            re-seeded; ``0`` disables re-seeding. Must be below the uniform share
            ``1 / codebook_size``, else a perfectly balanced codebook would be reset.
        usage_decay: Decay of the code-usage EMA per training step.
        hard: Use the straight-through hard one-hot in training too (eval is always hard).
    """

    step: torch.Tensor
    code_usage: torch.Tensor

    def __init__(
        self,
        *,
        rows: int,
        width: int,
        codebook_size: int = 512,
        tokens_per_chunk: int = 4,
        code_dim: int = 32,
        hidden: int = 256,
        commitment_weight: float = 0.25,
        codebook_weight: float = 1.0,
        temperature: float = 1.0,
        min_temperature: float = 1e-4,
        anneal: Literal["exponential", "cyclical"] = "cyclical",
        anneal_steps: int = 1000,
        dead_code_threshold: float = 1e-3,
        usage_decay: float = 0.99,
        hard: bool = False,
    ) -> None:
        super().__init__()
        if min(rows, width, codebook_size, tokens_per_chunk, code_dim, hidden, anneal_steps) < 1:
            raise ValueError(
                "rows, width, codebook_size, tokens_per_chunk, code_dim, hidden and anneal_steps must be positive, got "
                f"{(rows, width, codebook_size, tokens_per_chunk, code_dim, hidden, anneal_steps)}"
            )
        if codebook_size < 2:
            raise ValueError(f"codebook_size must be at least 2, got {codebook_size}")
        if not 0 < min_temperature <= temperature:
            raise ValueError(f"expected 0 < min_temperature <= temperature, got {min_temperature} and {temperature}")
        if anneal not in ("exponential", "cyclical"):
            raise ValueError(f"anneal must be 'exponential' or 'cyclical', got {anneal!r}")
        if not 0 <= dead_code_threshold < 1 / codebook_size:
            raise ValueError(
                f"dead_code_threshold must be in [0, 1 / codebook_size = {1 / codebook_size:.3g}), got {dead_code_threshold}"
            )
        if not 0 <= usage_decay < 1:
            raise ValueError(f"usage_decay must be in [0, 1), got {usage_decay}")
        if commitment_weight < 0 or codebook_weight < 0:
            raise ValueError(f"loss weights must be non-negative, got {commitment_weight} and {codebook_weight}")
        self.rows, self.width = rows, width
        self.codebook_size, self.tokens_per_chunk, self.code_dim = codebook_size, tokens_per_chunk, code_dim
        self.commitment_weight, self.codebook_weight = commitment_weight, codebook_weight
        self.temperature, self.min_temperature = temperature, min_temperature
        self.anneal, self.anneal_steps = anneal, anneal_steps
        self.dead_code_threshold, self.usage_decay, self.hard = dead_code_threshold, usage_decay, hard

        self.encoder = _mlp(width, hidden, tokens_per_chunk * code_dim)
        self.decoder = _mlp(tokens_per_chunk * code_dim, hidden, width)
        self.codebook = nn.Parameter(torch.randn(codebook_size, code_dim))  # (m, D), unit RMS like z_e
        # Saved with the weights: the annealing position and the usage EMA.
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("code_usage", torch.full((codebook_size,), 1.0 / codebook_size))

    @property
    def latent_shape(self) -> tuple[int, int]:
        """Shape of one model's quantized latent: ``(rows * tokens_per_chunk, code_dim)``."""
        return (self.rows * self.tokens_per_chunk, self.code_dim)

    @property
    def tokens_shape(self) -> tuple[int]:
        """Shape of one model's token sequence: ``(rows * tokens_per_chunk,)``."""
        return (self.rows * self.tokens_per_chunk,)

    def temperature_at(self, step: int) -> float:
        """The Gumbel-softmax temperature after ``step`` training steps."""
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        pos = step % self.anneal_steps if self.anneal == "cyclical" else min(step, self.anneal_steps)
        return self.temperature * (self.min_temperature / self.temperature) ** (pos / self.anneal_steps)

    # ------------------------------------------------------------------ internals
    def _check(self, x: torch.Tensor, mask: torch.Tensor | None, *, values: bool = True) -> None:
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.rows, self.width):
            raise ValueError(f"expected vectorized weights of shape (B, {self.rows}, {self.width}), got {tuple(x.shape)}")
        if values and not torch.isfinite(x).all():
            raise ValueError("vectorized weights contain NaN or Inf")
        if mask is not None:
            if mask.dtype != torch.bool:
                raise ValueError(f"expected a bool mask, got dtype {mask.dtype}")
            if tuple(mask.shape) not in ((self.rows, self.width), tuple(x.shape)):
                raise ValueError(
                    f"expected a mask of shape ({self.rows}, {self.width}) or {tuple(x.shape)}, got {tuple(mask.shape)}"
                )

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        # Inputs follow the weights' dtype (a no-op under autocast, where they stay float32).
        x = x.to(self.codebook.dtype)
        z_e = rearrange(self.encoder(x), "b n (l d) -> b n l d", l=self.tokens_per_chunk)  # (B, N, l, D)
        # Norm sqrt(D) (unit RMS): distances, hence logits, cannot shrink below the Gumbel
        # noise, which would make the token choice random (a collapse seen without it).
        return F.normalize(z_e, dim=-1) * math.sqrt(self.code_dim)

    def _logits(self, z_e: torch.Tensor) -> torch.Tensor:
        # -||z - e_j||^2 = 2 z.e_j - ||e_j||^2 - ||z||^2; the last term is constant (D).
        cb = self.codebook  # (m, D)
        return 2 * z_e @ cb.T - cb.pow(2).sum(-1) - self.code_dim  # (B, N, l, m)

    def _decode_quantized(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.decoder(rearrange(z_q.to(self.codebook.dtype), "b n l d -> b n (l d)"))  # (B, N, C)

    # ------------------------------------------------------------------ the verbs
    def encode(self, x: torch.Tensor, *, mask: torch.Tensor | None = None) -> TokenizerOutput:
        """Hard, noise-free tokens of rows ``(B, N, C)``.

        Returns:
            ``latents`` ``(B, N * l, code_dim)``, equal to ``codebook[indices]``, and
            ``indices`` ``(B, N * l)`` (the nearest code of each encoder output).
        """
        self._check(x, mask)
        idx = self._logits(self._encode(x)).argmax(-1)  # (B, N, l)
        idx = rearrange(idx, "b n l -> b (n l)")
        return TokenizerOutput(latents=F.embedding(idx, self.codebook), indices=idx)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Quantized latents ``(B, N * l, code_dim)`` to rows ``(B, N, C)``."""
        if latents.ndim != 3 or tuple(latents.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"expected latents of shape (B, {self.latent_shape[0]}, {self.latent_shape[1]}), got {tuple(latents.shape)}"
            )
        return self._decode_quantized(rearrange(latents, "b (n l) d -> b n l d", l=self.tokens_per_chunk))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Token indices ``(B, N * l)`` to rows ``(B, N, C)`` (codebook lookup, then decode)."""
        if indices.ndim != 2 or tuple(indices.shape[1:]) != self.tokens_shape:
            raise ValueError(f"expected indices of shape (B, {self.tokens_shape[0]}), got {tuple(indices.shape)}")
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise ValueError(f"expected integer indices, got dtype {indices.dtype}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(
                f"expected indices in [0, {self.codebook_size}), got values in [{int(indices.min())}, {int(indices.max())}]"
            )
        return self.decode(F.embedding(indices.long(), self.codebook))

    def loss(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> TokenizerOutput:
        """Eq. 2: masked reconstruction + commitment + codebook terms.

        In training mode, this call samples Gumbel noise, re-seeds dead codes, updates
        the usage EMA and advances the temperature schedule by one step; in eval mode
        it is deterministic and changes nothing.

        Args:
            x: Rows ``(B, N, C)`` (normalized weights).
            mask: ``(B, N, C)`` or ``(N, C)`` bool, ``True`` on real entries; padding is
                excluded from the reconstruction loss.
            generator: Randomness of the Gumbel noise and of dead-code re-seeding.

        Returns:
            ``latents`` ``(B, N * l, code_dim)`` as fed to the decoder, ``indices``
            ``(B, N * l)`` (the sampled codes), the scalar ``loss`` and ``metrics``.
        """
        self._check(x, mask, values=host_values(x))  # no per-step device sync (see paramgen._validate)
        training = self.training
        tau = self.temperature_at(int(self.step)) if training else self.min_temperature
        z_e = self._encode(x)  # (B, N, l, D)
        flat_e = z_e.detach().reshape(-1, self.code_dim)  # (T, D), T = B*N*l tokens
        reset = 0
        if training and self.dead_code_threshold > 0:
            reset = self._reseed(flat_e, generator)

        codebook = self.codebook  # (m, D), after re-seeding
        logits = self._logits(z_e)  # (B, N, l, m)
        if training:
            # Gumbel noise in float32, then in the logits' dtype: a bfloat16 draw near 1 would
            # round to 1 and give infinite noise.
            u = rand(logits.shape, generator=generator, device=logits.device)
            gumbel = -torch.log(-torch.log(u.clamp(torch.finfo(torch.float32).tiny, 1.0 - 1e-7))).to(logits.dtype)
            y = torch.softmax((logits + gumbel) / tau, dim=-1)  # (B, N, l, m)
            idx = y.argmax(-1)  # (B, N, l)
            if self.hard:
                y = F.one_hot(idx, self.codebook_size).to(y.dtype) - y.detach() + y
            z_q = y @ codebook  # (B, N, l, D)
            z_q_sg_y = y.detach() @ codebook
        else:
            idx = logits.argmax(-1)
            z_q = z_q_sg_y = F.embedding(idx, codebook)

        recon = self._decode_quantized(z_q)  # (B, N, C)
        err = (recon - x).pow(2)
        if mask is not None:
            m = mask.to(err.device).expand_as(x).to(err.dtype)
            mse = (err * m).sum() / m.sum().clamp_min(1.0)
        else:
            mse = err.mean()
        commitment = (z_e - z_q.detach()).pow(2).mean()
        codebook_loss = (z_e.detach() - z_q_sg_y).pow(2).mean()
        total = mse + self.commitment_weight * commitment + self.codebook_weight * codebook_loss

        with torch.no_grad():
            counts = torch.bincount(idx.reshape(-1), minlength=self.codebook_size).to(self.code_usage.dtype)
            probs = counts / counts.sum()
            if training:
                self.code_usage.mul_(self.usage_decay).add_((1 - self.usage_decay) * probs)
                self.step += 1
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum()
        # Tensors stay on the device (no host sync per step); the trainer reads them when it logs.
        metrics: dict[str, torch.Tensor | float] = {
            "recon_mse": mse.detach(),
            "commitment": commitment.detach(),
            "codebook": codebook_loss.detach(),
            "temperature": tau,
            "perplexity": entropy.exp(),
            "codebook_usage": (counts > 0).float().mean(),
            "dead_codes_reset": float(reset),
        }
        return TokenizerOutput(
            latents=rearrange(z_q, "b n l d -> b (n l) d"),
            indices=rearrange(idx, "b n l -> b (n l)"),
            loss=total,
            metrics=metrics,
        )

    @torch.no_grad()
    def _reseed(self, flat_e: torch.Tensor, generator: torch.Generator | None) -> int:
        """Copy random encoder outputs ``(T, D)`` into codes whose usage EMA is too low."""
        dead = torch.nonzero(self.code_usage < self.dead_code_threshold).flatten()
        n = dead.numel()
        if n == 0:
            return 0
        t = flat_e.shape[0]
        if t >= n:  # distinct tokens, so revived codes do not duplicate each other
            pick = randperm(t, generator=generator, device=flat_e.device)[:n]
        else:
            pick = randint(t, (n,), generator=generator, device=flat_e.device)
        self.codebook[dead] = flat_e[pick].to(self.codebook.dtype)
        self.code_usage[dead] = 1.0 / self.codebook_size
        return n
