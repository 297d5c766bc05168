"""Noise schedules and the DDPM / DDIM samplers that share them.

A schedule is a plain object, separate from the denoiser (as diffusers keeps
``DDPMScheduler`` apart from the UNet): it holds the betas and knows how to noise a clean
latent (forward process, D2NWG eq. 3) and how to take one reverse step given a predicted
noise (eq. 6). The two sampler functions run the reverse process with any
``eps_fn(x_t, t) -> eps``, so a prior composes ``denoiser + schedule``.

Timesteps are 0-based: ``t = 0`` is the first noising step (``x_1`` in the papers) and
``t = timesteps - 1`` the last. Coefficients are kept in float64 and cast to the
latents' dtype where used.

Examples:
    >>> import torch
    >>> sched = LinearSchedule(timesteps=100)
    >>> x0 = torch.zeros(2, 4, 8)  # (B, C, T)
    >>> x_t = sched.q_sample(x0, torch.tensor([0, 99]), torch.ones_like(x0))
    >>> bool(x_t[1].mean() > x_t[0].mean())  # more noise later in the chain
    True
    >>> g = torch.Generator().manual_seed(0)
    >>> ddim_sample(lambda x, t: torch.zeros_like(x), (3, 4, 8), sched, steps=10, generator=g).shape
    torch.Size([3, 4, 8])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from paramgen._random import randn
from paramgen._validate import host_values

__all__ = ["LinearSchedule", "ddpm_sample", "ddim_sample"]

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# DDPM's schedule (Ho et al. 2020): 1e-4 .. 2e-2 over 1000 steps.
_REFERENCE_STEPS = 1000
_REFERENCE_BETAS = (1e-4, 2e-2)


class LinearSchedule:
    """Linear beta schedule of DDPM (Ho et al. 2020), used by D2NWG (eqs. 3-6).

    ``betas = linspace(beta_start, beta_end, timesteps)``. When ``beta_start`` /
    ``beta_end`` are left ``None`` they default to DDPM's ``1e-4`` / ``2e-2`` *at 1000
    steps*, scaled by ``1000 / timesteps`` (as lucidrains' ``linear_beta_schedule`` does,
    capped at 0.999): with the unscaled values a short chain (say 100 steps) would end at
    ``alphas_cumprod[-1] = 0.37`` instead of about 0, and sampling from ``N(0, I)`` would be
    wrong. Explicit values are used as given.

    Args:
        timesteps: Length ``T`` of the chain.
        beta_start: First beta (``None``: ``1e-4 * 1000 / T``).
        beta_end: Last beta (``None``: ``2e-2 * 1000 / T``).

    Attributes:
        betas: ``(T,)`` float64 noise variances.
        alphas: ``(T,)`` float64, ``1 - betas``.
        alphas_cumprod: ``(T,)`` float64, ``abar_t = prod_{s<=t} alphas_s``.
        alphas_cumprod_prev: ``(T,)`` float64, ``abar_{t-1}`` with ``abar_{-1} = 1``.
        posterior_variance: ``(T,)`` float64, ``beta_tilde_t`` of ``q(x_{t-1} | x_t, x_0)``
            (zero at ``t = 0``).

    Examples:
        >>> sched = LinearSchedule(timesteps=1000)
        >>> round(float(sched.betas[-1]), 4), float(sched.alphas_cumprod[-1]) < 1e-4
        (0.02, True)
    """

    def __init__(self, *, timesteps: int = 1000, beta_start: float | None = None, beta_end: float | None = None) -> None:
        if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
            raise ValueError(f"timesteps must be a positive int, got {timesteps!r}")
        scale = _REFERENCE_STEPS / timesteps
        start = min(_REFERENCE_BETAS[0] * scale, 0.999) if beta_start is None else float(beta_start)
        end = min(_REFERENCE_BETAS[1] * scale, 0.999) if beta_end is None else float(beta_end)
        if not 0.0 < start <= end < 1.0:
            raise ValueError(f"expected 0 < beta_start <= beta_end < 1, got beta_start={start}, beta_end={end}")
        self.timesteps = timesteps
        self.beta_start, self.beta_end = beta_start, beta_end  # as given, for configs
        self.betas = torch.linspace(start, end, timesteps, dtype=torch.float64)  # (T,)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    def __repr__(self) -> str:
        return f"LinearSchedule(timesteps={self.timesteps}, betas={float(self.betas[0]):.3g}..{float(self.betas[-1]):.3g})"

    # --- helpers -------------------------------------------------------------------
    def _check_t(self, t: int | torch.Tensor, *, allow_minus_one: bool = False) -> None:
        low = -1 if allow_minus_one else 0
        if isinstance(t, torch.Tensor):
            if t.dtype.is_floating_point or t.dtype == torch.bool:
                raise TypeError(f"timesteps must be integer tensors, got {t.dtype}")
            # On an accelerator the range check would stall the device at every training step.
            if t.numel() and host_values(t) and (int(t.min()) < low or int(t.max()) >= self.timesteps):
                raise ValueError(f"timesteps must lie in [{low}, {self.timesteps - 1}], got {int(t.min())}..{int(t.max())}")
        elif isinstance(t, bool) or not isinstance(t, int) or not low <= t < self.timesteps:
            raise ValueError(f"timestep must be an int in [{low}, {self.timesteps - 1}], got {t!r}")

    @staticmethod
    def _coef(values: torch.Tensor, t: int | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``values[t]`` cast to ``x``'s dtype/device, shaped to broadcast over ``x`` (B, 1, ...)."""
        if isinstance(t, torch.Tensor) and t.ndim > 0:
            # Gather on x's device: moving the (T,) table there costs no device-to-host sync,
            # unlike moving the (B,) steps to the CPU.
            picked = values.to(device=x.device, dtype=x.dtype)[t.to(x.device).long()]  # (B,)
            return picked.reshape(-1, *([1] * (x.ndim - 1)))
        return values[int(t)].to(device=x.device, dtype=x.dtype)

    def _abar_prev(self, t_prev: int | torch.Tensor) -> torch.Tensor:
        """``abar`` at ``t_prev`` where ``t_prev = -1`` means the clean end (``abar = 1``)."""
        padded = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])  # index t_prev + 1
        return padded[(t_prev.detach().cpu().long() + 1) if isinstance(t_prev, torch.Tensor) else int(t_prev) + 1]

    # --- forward process -----------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noise clean latents to step ``t`` (eq. 3 in closed form).

        ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``.

        Args:
            x0: ``(B, ...)`` clean latents.
            t: An int or a ``(B,)`` integer tensor of steps in ``[0, T)``.
            noise: Standard normal noise shaped like ``x0``.

        Returns:
            ``(B, ...)`` noisy latents ``x_t``.

        Examples:
            >>> import torch
            >>> sched = LinearSchedule(timesteps=10)
            >>> sched.q_sample(torch.ones(2, 1, 3), 0, torch.zeros(2, 1, 3)).shape
            torch.Size([2, 1, 3])
        """
        if noise.shape != x0.shape:
            raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
        self._check_t(t)
        abar = self._coef(self.alphas_cumprod, t, x0)
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def predict_x0(self, eps: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Clean latents implied by a noise prediction: ``(x_t - sqrt(1-abar) eps) / sqrt(abar)``.

        Examples:
            >>> import torch
            >>> sched = LinearSchedule(timesteps=10)
            >>> g = torch.Generator().manual_seed(0)
            >>> x0, eps = torch.randn(2, 1, 3, generator=g), torch.randn(2, 1, 3, generator=g)
            >>> torch.allclose(sched.predict_x0(eps, sched.q_sample(x0, 5, eps), 5), x0, atol=1e-4)
            True
        """
        self._check_t(t)
        abar = self._coef(self.alphas_cumprod, t, x_t)
        return (x_t - (1.0 - abar).sqrt() * eps) / abar.sqrt()

    # --- reverse steps -------------------------------------------------------------
    def ddpm_step(
        self,
        eps: torch.Tensor,
        x_t: torch.Tensor,
        t: int | torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        clip_x0: float | None = None,
    ) -> torch.Tensor:
        """One ancestral step ``x_t -> x_{t-1}`` (eq. 6) with variance ``beta_tilde_t``.

        ``x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sqrt(beta_tilde_t) xi``;
        no noise is added at ``t = 0``. With ``clip_x0`` the mean is computed from the
        predicted ``x0`` clamped to ``[-clip_x0, clip_x0]`` (the same mean when nothing clips).

        Args:
            eps: Predicted noise, shaped like ``x_t``.
            x_t: ``(B, ...)`` current latents.
            t: An int or a ``(B,)`` integer tensor of current steps.
            generator: Randomness for ``xi``.
            clip_x0: Optional bound on the predicted clean latents; ``None`` clips nothing.

        Returns:
            ``x_{t-1}``, shaped like ``x_t``.

        Examples:
            >>> import torch
            >>> sched = LinearSchedule(timesteps=10)
            >>> x = torch.randn(2, 1, 3)
            >>> torch.equal(sched.ddpm_step(torch.zeros_like(x), x, 0), x / sched.alphas[0].sqrt().float())
            True
        """
        if eps.shape != x_t.shape:
            raise ValueError(f"eps must have the shape of x_t {tuple(x_t.shape)}, got {tuple(eps.shape)}")
        self._check_t(t)
        if clip_x0 is None:
            beta = self._coef(self.betas, t, x_t)
            abar = self._coef(self.alphas_cumprod, t, x_t)
            alpha = self._coef(self.alphas, t, x_t)
            mean = (x_t - beta / (1.0 - abar).sqrt() * eps) / alpha.sqrt()
        else:
            x0 = self.predict_x0(eps, x_t, t).clamp(-clip_x0, clip_x0)
            abar_prev64 = self.alphas_cumprod_prev
            c0 = self.betas * abar_prev64.sqrt() / (1.0 - self.alphas_cumprod)  # posterior mean coefficients
            ct = (1.0 - abar_prev64) * self.alphas.sqrt() / (1.0 - self.alphas_cumprod)
            mean = self._coef(c0, t, x_t) * x0 + self._coef(ct, t, x_t) * x_t
        if not isinstance(t, torch.Tensor) or t.ndim == 0:
            if int(t) == 0:
                return mean
            return mean + self._coef(self.posterior_variance, t, x_t).sqrt() * randn(
                x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype
            )
        # Per-row steps; beta_tilde_0 = 0 already removes the noise at t = 0.
        std = self._coef(self.posterior_variance, t, x_t).sqrt()
        return mean + std * randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)

    def ddim_step(
        self,
        eps: torch.Tensor,
        x_t: torch.Tensor,
        t: int | torch.Tensor,
        t_prev: int | torch.Tensor,
        *,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        clip_x0: float | None = None,
    ) -> torch.Tensor:
        """One DDIM step ``x_t -> x_{t_prev}`` (Song et al. 2021, eq. 12).

        ``x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma xi`` with
        ``sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)``.
        ``eta = 0`` is deterministic; ``eta = 1`` over consecutive steps is DDPM.

        Args:
            eps: Predicted noise, shaped like ``x_t``.
            x_t: ``(B, ...)`` current latents.
            t: Current step (int or ``(B,)`` tensor).
            t_prev: Target step, ``< t``; ``-1`` means the clean latents.
            eta: Stochasticity, ``>= 0``.
            generator: Randomness for ``xi`` (drawn only when ``sigma > 0``).
            clip_x0: Optional bound on the predicted clean latents (``eps`` is then
                recomputed from the clamped ``x0``, as diffusers does).

        Returns:
            ``x_{t_prev}``, shaped like ``x_t``.

        Examples:
            >>> import torch
            >>> sched = LinearSchedule(timesteps=10)
            >>> g = torch.Generator().manual_seed(0)
            >>> x0, eps = torch.randn(2, 1, 3, generator=g), torch.randn(2, 1, 3, generator=g)
            >>> torch.allclose(sched.ddim_step(eps, sched.q_sample(x0, 5, eps), 5, -1), x0, atol=1e-4)
            True
        """
        if eps.shape != x_t.shape:
            raise ValueError(f"eps must have the shape of x_t {tuple(x_t.shape)}, got {tuple(eps.shape)}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self._check_t(t)
        self._check_t(t_prev, allow_minus_one=True)
        if isinstance(t, torch.Tensor) or isinstance(t_prev, torch.Tensor):
            if bool(torch.as_tensor(t_prev).cpu().ge(torch.as_tensor(t).cpu()).any()):
                raise ValueError("t_prev must be smaller than t")
        elif t_prev >= t:
            raise ValueError(f"t_prev must be smaller than t, got t={t}, t_prev={t_prev}")
        abar64 = self.alphas_cumprod[t.detach().cpu().long()] if isinstance(t, torch.Tensor) else self.alphas_cumprod[int(t)]
        abar_prev64 = self._abar_prev(t_prev)
        sigma64 = eta * ((1.0 - abar_prev64) / (1.0 - abar64)).sqrt() * (1.0 - abar64 / abar_prev64).sqrt()

        def cast(v: torch.Tensor) -> torch.Tensor:
            v = v.to(device=x_t.device, dtype=x_t.dtype)
            return v.reshape(-1, *([1] * (x_t.ndim - 1))) if v.ndim else v

        abar, abar_prev, sigma = cast(abar64), cast(abar_prev64), cast(sigma64)
        x0 = (x_t - (1.0 - abar).sqrt() * eps) / abar.sqrt()
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
            eps = (x_t - abar.sqrt() * x0) / (1.0 - abar).sqrt()
        x_prev = abar_prev.sqrt() * x0 + (1.0 - abar_prev - sigma**2).clamp_min(0.0).sqrt() * eps
        if bool((sigma64 > 0).any()):
            x_prev = x_prev + sigma * randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return x_prev


def _initial_noise(
    shape: Sequence[int],
    init_noise: torch.Tensor | None,
    generator: torch.Generator | None,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    if init_noise is not None:
        if tuple(init_noise.shape) != tuple(shape):
            raise ValueError(f"init_noise must have shape {tuple(shape)}, got {tuple(init_noise.shape)}")
        return init_noise
    return randn(shape, generator=generator, device=device, dtype=dtype)  # x_T ~ N(0, I)


def ddpm_sample(
    eps_fn: EpsFn,
    shape: Sequence[int],
    schedule: LinearSchedule,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    init_noise: torch.Tensor | None = None,
    clip_x0: float | None = None,
) -> torch.Tensor:
    """Ancestral DDPM sampling: all ``T`` reverse steps from ``x_T ~ N(0, I)``.

    Args:
        eps_fn: ``eps_fn(x_t (B, ...), t (B,) long) -> eps (B, ...)``.
        shape: Shape ``(B, ...)`` of the samples.
        schedule: The noise schedule the denoiser was trained with.
        generator: Randomness for ``x_T`` and every step.
        device: Device of the samples (``None``: ``init_noise``'s, else the default).
        dtype: Dtype of the samples.
        init_noise: Optional ``x_T`` to start from instead of drawing it.
        clip_x0: Optional bound on the predicted clean latents; ``None`` clips nothing
            (latents are unit-ish scale, no clamp by default).

    Returns:
        ``x_0`` of the given shape.

    Examples:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> x = ddpm_sample(lambda x, t: torch.zeros_like(x), (2, 1, 5), LinearSchedule(timesteps=20), generator=g)
        >>> x.shape
        torch.Size([2, 1, 5])
    """
    x = _initial_noise(shape, init_noise, generator, device, dtype)
    for step in reversed(range(schedule.timesteps)):
        t = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)  # (B,)
        x = schedule.ddpm_step(eps_fn(x, t), x, step, generator=generator, clip_x0=clip_x0)
    return x


def _ddim_timesteps(timesteps: int, steps: int) -> list[int]:
    """Evenly spaced steps from ``timesteps - 1`` down to ``0`` (both included)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be an int in [1, {timesteps}], got {steps!r}")
    # Starting at T-1 (not at a "leading" offset) keeps x_T ~ N(0, I) consistent with abar_T ~ 0.
    return [int(v) for v in torch.linspace(timesteps - 1, 0, steps, dtype=torch.float64).round().long()]


def ddim_sample(
    eps_fn: EpsFn,
    shape: Sequence[int],
    schedule: LinearSchedule,
    *,
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    init_noise: torch.Tensor | None = None,
    clip_x0: float | None = None,
) -> torch.Tensor:
    """DDIM sampling over ``steps`` evenly spaced timesteps (``T-1`` down to ``0``).

    Args:
        eps_fn: ``eps_fn(x_t (B, ...), t (B,) long) -> eps (B, ...)``.
        shape: Shape ``(B, ...)`` of the samples.
        schedule: The noise schedule the denoiser was trained with.
        steps: Number of denoiser calls, in ``[1, T]``.
        eta: 0 is deterministic given ``x_T``; 1 with ``steps = T`` is DDPM.
        generator: Randomness for ``x_T`` (and the steps' noise when ``eta > 0``).
        device: Device of the samples (``None``: ``init_noise``'s, else the default).
        dtype: Dtype of the samples.
        init_noise: Optional ``x_T`` to start from instead of drawing it.
        clip_x0: Optional bound on the predicted clean latents; ``None`` clips nothing.

    Returns:
        ``x_0`` of the given shape.

    Examples:
        >>> import torch
        >>> xT = torch.randn(2, 1, 5)
        >>> zero = lambda x, t: torch.zeros_like(x)
        >>> sched = LinearSchedule(timesteps=100)
        >>> torch.equal(ddim_sample(zero, (2, 1, 5), sched, init_noise=xT), ddim_sample(zero, (2, 1, 5), sched, init_noise=xT))
        True
    """
    ts = _ddim_timesteps(schedule.timesteps, steps)
    x = _initial_noise(shape, init_noise, generator, device, dtype)
    for i, step in enumerate(ts):
        prev = ts[i + 1] if i + 1 < len(ts) else -1
        t = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)  # (B,)
        x = schedule.ddim_step(eps_fn(x, t), x, step, prev, eta=eta, generator=generator, clip_x0=clip_x0)
    return x
