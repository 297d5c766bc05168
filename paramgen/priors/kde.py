"""Kernel density baseline in latent space (Schürholt et al.'s S_KDE), one density per condition.

`KDEPrior` stores the training latents grouped by identical condition vectors (e.g. from
an index conditioner). Sampling picks the group whose condition is nearest (L2) to the
requested one, draws one of its latents uniformly and adds Gaussian noise with a
per-dimension standard deviation ``factor * std_group`` — a Gaussian KDE with a diagonal
bandwidth, the factor following Scott's or Silverman's rule (as ``scipy.stats.gaussian_kde``).
It is fitted, not trained: ``loss`` raises.

Examples:
    >>> import torch
    >>> latents = torch.cat([torch.randn(10, 1, 4), torch.randn(10, 1, 4) + 50])  # (20, C, T)
    >>> cond = torch.cat([torch.zeros(10, 1), torch.ones(10, 1)])  # two conditions
    >>> prior = KDEPrior().fit(latents, cond)
    >>> x = prior.sample(3, torch.ones(3, 1), generator=torch.Generator().manual_seed(0))
    >>> x.shape, bool((x.mean() - 50).abs() < 5)
    (torch.Size([3, 1, 4]), True)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch

from paramgen._random import rand, randn
from paramgen.priors._checks import reject_unknown_options
from paramgen.registry import Configurable
from paramgen.spec import NonFiniteWeightsError

__all__ = ["KDEPrior"]

Bandwidth = float | Literal["scott", "silverman"]


class KDEPrior(Configurable):
    """Per-condition Gaussian KDE over latents ``(C, T)``.

    The bandwidth of group ``g`` (``n_g`` members, ``d = C * T`` dimensions) is
    ``factor_g * std_g`` per dimension, with ``factor_g = n_g ** (-1 / (d + 4))`` (Scott),
    ``(n_g (d + 2) / 4) ** (-1 / (d + 4))`` (Silverman) or a fixed float. ``std_g`` is the
    group's per-dimension standard deviation (``ddof = 1``); where it is zero or the group
    has a single member, the pooled within-group std is used instead (and the std of all
    latents when every group is a singleton). In high dimension both rules give factors
    near 1: the noise is about as large as the spread of the group.

    Args:
        bandwidth: ``"scott"``, ``"silverman"`` or a positive factor.

    Examples:
        >>> import torch
        >>> prior = KDEPrior(bandwidth=0.1).fit(torch.randn(5, 2, 3), None)
        >>> prior.sample(4, None, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([4, 2, 3])
    """

    #: The keyword options of `sample`: none.
    SAMPLE_OPTIONS: ClassVar[tuple[str, ...]] = ()
    config_canonical = ("bandwidth",)  # a number recorded as a float

    def __init__(self, *, bandwidth: Bandwidth = "scott") -> None:
        if isinstance(bandwidth, str):
            if bandwidth not in ("scott", "silverman"):
                raise ValueError(f"bandwidth must be 'scott', 'silverman' or a positive float, got {bandwidth!r}")
        elif isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float)) or not bandwidth > 0:
            raise ValueError(f"bandwidth must be 'scott', 'silverman' or a positive float, got {bandwidth!r}")
        self.bandwidth: Bandwidth = bandwidth if isinstance(bandwidth, str) else float(bandwidth)
        self._fitted = False
        self._dtype: torch.dtype | None = None  # set by `to(dtype=...)`: fit keeps latents in it

    def __repr__(self) -> str:
        groups = f", groups={len(self.conds)}" if self._fitted else ""
        return f"KDEPrior(bandwidth={self.bandwidth!r}{groups})"

    # --- fitting -----------------------------------------------------------------------
    def fit(self, latents: torch.Tensor, cond: torch.Tensor | None = None) -> KDEPrior:
        """Store ``latents`` grouped by identical rows of ``cond``.

        Args:
            latents: ``(M, C, T)`` latents.
            cond: ``(M, Dc)`` condition vectors (exact equality defines a group), or
                ``None`` for one unconditional group.

        Returns:
            ``self``. The latents are kept in their own dtype, or in the dtype given to
            `to` before fitting.

        Examples:
            >>> import torch
            >>> prior = KDEPrior().fit(torch.randn(6, 1, 3), torch.tensor([[0.0], [1.0]] * 3))
            >>> prior.conds.shape
            torch.Size([2, 1])
        """
        if not isinstance(latents, torch.Tensor) or latents.ndim != 3 or latents.shape[0] < 1:
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"expected latents of shape (M, C, T) with M >= 1, got {got}")
        if not latents.is_floating_point():
            raise TypeError(f"expected floating latents, got {latents.dtype}")
        if not torch.isfinite(latents).all():
            raise NonFiniteWeightsError("latents contain NaN or Inf")
        if self._dtype is not None:
            latents = latents.to(self._dtype)
        rows = latents.shape[0]
        if cond is None:
            cond = torch.zeros(rows, 0, dtype=latents.dtype, device=latents.device)  # one group, Dc = 0
        elif not isinstance(cond, torch.Tensor) or cond.ndim != 2 or cond.shape[0] != rows:
            got = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
            raise ValueError(f"expected cond of shape ({rows}, Dc), got {got}")
        elif not torch.isfinite(cond).all():
            raise ValueError("condition vectors contain NaN or Inf")
        cond = cond.to(latents.device)
        if cond.shape[1] == 0:  # torch.unique cannot group zero-width rows
            conds, group = cond[:1], torch.zeros(rows, dtype=torch.long, device=latents.device)
        else:
            conds, group = torch.unique(cond, dim=0, return_inverse=True)  # (G, Dc), (M,)
        order = torch.argsort(group, stable=True)
        self._set(latents[order].clone(), group[order].clone(), conds.to(torch.promote_types(latents.dtype, torch.float32)))
        return self

    def _set(self, latents: torch.Tensor, group: torch.Tensor, conds: torch.Tensor) -> None:
        """Derive per-group statistics from latents sorted by group."""
        num_groups = conds.shape[0]
        flat = latents.reshape(latents.shape[0], -1).double()  # (M, d)
        dim = flat.shape[1]
        counts = torch.bincount(group, minlength=num_groups)  # (G,)
        if bool((counts == 0).any()):
            raise ValueError("every stored condition needs at least one latent")
        means = torch.zeros(num_groups, dim, dtype=flat.dtype, device=flat.device).index_add_(0, group, flat) / counts[:, None]
        resid = flat - means[group]  # (M, d)
        sq = torch.zeros_like(means).index_add_(0, group, resid**2)  # (G, d)
        std = (sq / (counts[:, None] - 1).clamp_min(1)).sqrt()
        dof = int(counts.sum() - num_groups)
        pooled = (sq.sum(0) / dof).sqrt() if dof > 0 else flat.std(0, correction=1 if flat.shape[0] > 1 else 0)  # (d,)
        std = torch.where((counts[:, None] > 1) & (std > 0), std, pooled.expand_as(std))
        n = counts.double()
        if self.bandwidth == "scott":
            factor = n ** (-1.0 / (dim + 4))
        elif self.bandwidth == "silverman":
            factor = (n * (dim + 2) / 4.0) ** (-1.0 / (dim + 4))
        else:
            factor = torch.full_like(n, float(self.bandwidth))
        self.latents, self.group, self.conds = latents, group, conds
        self.counts = counts
        self.offsets = torch.cumsum(counts, 0) - counts  # first member of each group
        self.scale = (factor[:, None] * std).to(latents.dtype).reshape(num_groups, *latents.shape[1:])  # (G, C, T)
        self._fitted = True

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> KDEPrior:
        """Move the stored latents (and, with ``dtype``, cast them and the conditions); returns ``self``.

        Samples come out on this device and in this dtype; conditions passed to `sample`
        are moved here, and a later `fit` keeps its latents in ``dtype``.

        Examples:
            >>> import torch
            >>> prior = KDEPrior().fit(torch.randn(4, 1, 2), None).to("cpu", torch.float64)
            >>> prior.sample(2, None).dtype
            torch.float64
        """
        if dtype is not None:
            if not dtype.is_floating_point:
                raise TypeError(f"KDEPrior.to: expected a floating dtype, got {dtype}")
            self._dtype = dtype
        if self._fitted:
            self.latents = self.latents.to(device=device, dtype=dtype)
            # The conditions are keys of a nearest-neighbour lookup: at least float32, so
            # that bfloat16 rounding cannot merge two of them (cdist has no half kernels).
            self.conds = self.conds.to(device=device, dtype=None if dtype is None else torch.promote_types(dtype, torch.float32))
            self.scale = self.scale.to(device=device, dtype=dtype)
            self.group, self.counts, self.offsets = (t.to(device) for t in (self.group, self.counts, self.offsets))
        return self

    def _require_fit(self) -> None:
        if not self._fitted:
            raise RuntimeError("KDEPrior is not fitted: call fit() first or load_state_dict()")

    # --- Prior protocol ----------------------------------------------------------------
    def loss(self, latents: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Not defined: a KDE has no gradient training.

        Raises:
            TypeError: Always.

        Examples:
            >>> import torch
            >>> KDEPrior().loss(torch.zeros(1, 1, 1), None)
            Traceback (most recent call last):
            ...
            TypeError: KDEPrior is fitted with fit(), not trained by gradient
        """
        raise TypeError("KDEPrior is fitted with fit(), not trained by gradient")

    def sample(self, n: int, cond: torch.Tensor | None = None, *, generator: torch.Generator | None = None, **unknown: Any) -> torch.Tensor:
        """Draw ``n`` latents from the KDE of the nearest stored condition.

        A KDE has no sampling options (`SAMPLE_OPTIONS` is empty): its bandwidth is fixed
        when it is fitted.

        Args:
            n: Number of samples.
            cond: ``(n, Dc)`` condition vectors, ``None`` when fitted without conditions.
            generator: The only source of randomness.
            **unknown: Any keyword raises (e.g. ``sampler=`` meant for a diffusion prior).

        Returns:
            ``(n, C, T)`` latents.

        Raises:
            TypeError: Any sampling option.

        Examples:
            >>> import torch
            >>> prior = KDEPrior().fit(torch.randn(4, 1, 2), torch.eye(2).repeat(2, 1))
            >>> prior.sample(3, torch.eye(2)[[0, 1, 1]]).shape
            torch.Size([3, 1, 2])
        """
        reject_unknown_options("KDEPrior.sample", unknown, self.SAMPLE_OPTIONS)
        self._require_fit()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        dc = self.conds.shape[1]
        if dc == 0:
            if cond is not None:
                raise ValueError(f"this KDEPrior was fitted without conditions; pass cond=None, got a tensor of shape {tuple(cond.shape)}")
            nearest = torch.zeros(n, dtype=torch.long, device=self.latents.device)
        else:
            if cond is None:
                raise ValueError(f"this KDEPrior is conditional: expected cond of shape ({n}, {dc}), got None")
            if not isinstance(cond, torch.Tensor) or cond.shape != (n, dc):
                got = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
                raise ValueError(f"expected cond of shape ({n}, {dc}), got {got}")
            cond = cond.to(device=self.conds.device, dtype=self.conds.dtype)
            nearest = torch.cdist(cond, self.conds).argmin(dim=1)  # (n,) group index
        device = self.latents.device
        u = rand((n,), generator=generator, device=device)  # uniform member choice
        within = (u.double() * self.counts[nearest]).long().clamp_max(self.counts[nearest] - 1)
        centers = self.latents[self.offsets[nearest] + within]  # (n, C, T)
        noise = randn(centers.shape, generator=generator, device=device, dtype=centers.dtype)
        return centers + self.scale[nearest] * noise

    # --- persistence -------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The fitted data as tensors (for safetensors).

        Examples:
            >>> import torch
            >>> sorted(KDEPrior().fit(torch.randn(3, 1, 2), None).state_dict())
            ['conds', 'group', 'latents']
        """
        self._require_fit()
        return {"latents": self.latents, "group": self.group, "conds": self.conds}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore a fitted KDE from `state_dict` output.

        Examples:
            >>> import torch
            >>> prior = KDEPrior().fit(torch.randn(3, 1, 2), None)
            >>> copy = KDEPrior(); copy.load_state_dict(prior.state_dict())
            >>> torch.equal(copy.scale, prior.scale)
            True
        """
        missing = {"latents", "group", "conds"} - set(state)
        if missing:
            raise KeyError(f"KDEPrior state is missing {sorted(missing)}")
        latents, group, conds = state["latents"], state["group"].long(), state["conds"]
        if latents.ndim != 3 or group.shape != (latents.shape[0],) or conds.ndim != 2:
            raise ValueError(f"inconsistent KDEPrior state: latents {tuple(latents.shape)}, group {tuple(group.shape)}, conds {tuple(conds.shape)}")
        self._set(latents.clone(), group.clone(), conds.clone())

