"""Contrastive alignment of a conditioner with weight latents (D2NWG eq. 2, Alg. 2).

Before the latent diffusion prior is trained, D2NWG pre-trains its dataset encoder so
that a dataset's vector lies near the latents of the weights trained on it: a CLIP-style
symmetric InfoNCE between condition vectors and projected latents (`align_to_latents`),
after which the encoder is frozen. `LatentProjection` is the shared space of both sides and
`retrieval_accuracy` measures the alignment. Any conditioner that is an ``nn.Module``
can be aligned (`paramgen.conditioners.ImageSetConditioner` is the paper's).

Devices: the alignment runs on the device of the conditioner's parameters (or of the
projection's, for a conditioner without any); latents and index tensors are moved there,
raw conditions are passed to the conditioner as given (conditioners move their inputs to
their own device), and the ``generator`` may live on the CPU or on that device.

Examples:
    >>> import torch
    >>> from paramgen.conditioners import IndexConditioner
    >>> cond = IndexConditioner(["a", "b", "c"], dim=4)
    >>> losses = align_to_latents(cond, ["a", "b", "c"], torch.eye(3), steps=20, generator=torch.Generator().manual_seed(0))
    >>> len(losses), cond.embedding.weight.requires_grad
    (20, False)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from paramgen._random import randint, randperm
from paramgen.draws import pick_draws

__all__ = ["LatentProjection", "align_to_latents", "reinitialize", "retrieval_accuracy"]


class LatentProjection(nn.Module):
    """The shared space of `align_to_latents`: L2-normalized projections of both sides.

    Latents ``(M, *latent_shape)`` are flattened and mapped linearly to ``proj_dim``;
    condition vectors ``(M, cond_dim)`` are used as they are when ``proj_dim`` is
    ``None`` (the space is the conditioner's own, ``proj_dim = cond_dim``), else mapped
    linearly too.

    Args:
        latent_dim: Number of entries of one flattened latent.
        cond_dim: The conditioner's ``dim``.
        proj_dim: Width of the shared space; ``None`` aligns the conditioner's outputs
            directly.

    Examples:
        >>> import torch
        >>> proj = LatentProjection(12, 4)
        >>> z = proj.latents(torch.randn(5, 3, 4))  # 5 latents of shape (3, 4), flattened
        >>> z.shape, torch.allclose(z.norm(dim=1), torch.ones(5))
        (torch.Size([5, 4]), True)
    """

    def __init__(self, latent_dim: int, cond_dim: int, *, proj_dim: int | None = None) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.cond_dim = int(cond_dim)
        self.proj_dim = proj_dim
        out = cond_dim if proj_dim is None else proj_dim
        self.latent_proj = nn.Linear(latent_dim, out)
        self.cond_proj = nn.Identity() if proj_dim is None else nn.Linear(cond_dim, proj_dim)

    def _dtype(self) -> torch.dtype:
        return self.latent_proj.weight.dtype

    def latents(self, latents: torch.Tensor) -> torch.Tensor:
        """``(M, *latent_shape)`` -> unit vectors ``(M, P)``, in the projection's dtype."""
        flat = latents.reshape(latents.shape[0], -1).to(self._dtype())  # (M, L)
        if flat.shape[1] != self.latent_dim:
            raise ValueError(f"LatentProjection: expected latents with {self.latent_dim} entries, got {flat.shape[1]}")
        return F.normalize(self.latent_proj(flat), dim=-1)  # (M, P)

    def conditions(self, cond: torch.Tensor) -> torch.Tensor:
        """``(M, cond_dim)`` -> unit vectors ``(M, P)``, in the projection's dtype (a
        conditioner in another dtype meets the latents in this one)."""
        if cond.dim() != 2 or cond.shape[1] != self.cond_dim:
            raise ValueError(f"LatentProjection: expected conditions (M, {self.cond_dim}), got {tuple(cond.shape)}")
        return F.normalize(self.cond_proj(cond.to(self._dtype())), dim=-1)  # (M, P)


@torch.no_grad()
def reinitialize(module: nn.Module, *, generator: torch.Generator | None = None) -> int:
    """Draw fresh initial values for every trainable parameter of ``module``, in place.

    For alignment restarts (``FitConfig.align_restarts``): a submodule with
    ``reset_parameters`` (``nn.Linear``, ``nn.LayerNorm``, ...) that owns a trainable
    parameter resets itself; any other trainable parameter (e.g. a Set Transformer's
    inducing points or PMA seeds) is drawn Xavier-uniform when it has two or more
    dimensions and set to zero otherwise. Frozen parameters (``requires_grad=False``,
    e.g. a pretrained feature extractor) are left as they are.

    Args:
        module: The module to re-initialize.
        generator: Seeds the draws (``reset_parameters`` draws from torch's global
            generator, so it is forked and seeded from this one; the caller's global
            state is left as it was). ``None``: torch's global generator.

    Returns:
        The number of parameters given new values.

    Examples:
        >>> import torch
        >>> lin = torch.nn.Linear(3, 2)
        >>> before = lin.weight.clone()
        >>> reinitialize(lin, generator=torch.Generator().manual_seed(0))
        2
        >>> torch.equal(before, lin.weight)
        False
    """
    seed = None if generator is None else int(randint(2**62, (1,), generator=generator, device="cpu"))
    done: set[int] = set()
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for sub in module.modules():
            own = [p for p in sub.parameters(recurse=False) if p.requires_grad]
            reset = getattr(sub, "reset_parameters", None)
            if own and callable(reset):
                reset()
                done.update(id(p) for p in sub.parameters(recurse=False))
        for p in module.parameters():
            if p.requires_grad and id(p) not in done:
                if p.dim() >= 2:
                    nn.init.xavier_uniform_(p)
                else:
                    nn.init.zeros_(p)
                done.add(id(p))
    return sum(1 for p in module.parameters() if p.requires_grad and id(p) in done)


def _group_rows(groups: Sequence[str] | None, m: int) -> list[list[int]]:
    if groups is None:
        return [[i] for i in range(m)]
    if isinstance(groups, (str, bytes)) or len(groups) != m:
        got = "a str" if isinstance(groups, (str, bytes)) else f"{len(groups)}"
        raise ValueError(f"align_to_latents: expected {m} groups (one per latent), got {got}")
    rows: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        rows.setdefault(str(g), []).append(i)
    return list(rows.values())


def align_to_latents(
    conditioner: nn.Module,
    raw: Sequence[Any],
    latents: torch.Tensor,
    *,
    groups: Sequence[str] | None = None,
    steps: int = 500,
    batch_size: int = 32,
    lr: float = 1e-3,
    temperature: float = 0.1,
    proj_dim: int | None = None,
    projection: LatentProjection | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> list[float]:
    """Pre-train a conditioner contrastively against frozen weight latents (D2NWG eq. 2, Alg. 2), then freeze it.

    Row ``i`` pairs the raw condition ``raw[i]`` (e.g. a dataset's image features) with
    ``latents[i]`` (the VAE latent of weights trained on it). Each step draws
    ``min(batch_size, number of groups)`` distinct groups and one random row of each, so
    two checkpoints of one task never meet in a batch as false negatives. The loss is
    the symmetric CLIP InfoNCE on L2-normalized embeddings, ``logits = c @ z.T / temperature``.
    The conditioner and the projection (`LatentProjection`) are trained with Adam; the
    latents are detached. Afterwards both are frozen (``requires_grad_(False)``, eval).

    Latents are projected as given: pass them at a unit-ish scale (VAE latents are).

    Args:
        conditioner: A `paramgen.interfaces.Conditioner` that is an ``nn.Module``.
        raw: ``M`` raw conditions, one per latent row (repeat a dataset for each of its
            checkpoints); a `paramgen.draws.Draws` gives a fresh one of its draws at each step.
        latents: ``(M, *latent_shape)`` frozen latents, flattened to ``(M, L)``.
        groups: The task of each row; ``None`` makes every row its own group.
        steps: Optimizer steps.
        batch_size: Groups per step (at most the number of groups).
        lr: Adam learning rate.
        temperature: Softmax temperature ``tau`` of eq. 2.
        proj_dim: Width of the shared space when ``projection`` is ``None``; ``None``
            aligns the conditioner's outputs directly with projected latents.
        projection: A `LatentProjection` to train in place (to keep it, e.g. for
            `retrieval_accuracy`); ``None`` makes a fresh one (initialized from torch's
            global generator) that is discarded.
        generator: Randomness of the batch sampling (on the CPU or on the conditioner's device).
        progress: Show a tqdm progress bar.

    Returns:
        The loss of each step.

    Raises:
        ValueError: Fewer than two groups, or sizes that do not match.

    Examples:
        >>> import torch
        >>> from paramgen.conditioners import IndexConditioner
        >>> g = torch.Generator().manual_seed(0)
        >>> cond = IndexConditioner(["a", "b", "c"], dim=4)
        >>> losses = align_to_latents(cond, ["a", "b", "c"], torch.eye(3), steps=20, generator=g)
        >>> losses[-1] < losses[0], cond.embedding.weight.requires_grad
        (True, False)
    """
    if not isinstance(conditioner, nn.Module) or not hasattr(conditioner, "dim"):
        raise TypeError(f"align_to_latents: expected a conditioner nn.Module with a dim, got {type(conditioner).__name__}")
    if not isinstance(latents, torch.Tensor) or latents.dim() < 2:
        got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise ValueError(f"align_to_latents: expected latents (M, *latent_shape), got {got}")
    m = latents.shape[0]
    if len(raw) != m:
        raise ValueError(f"align_to_latents: expected one raw condition per latent ({m}), got {len(raw)}")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"align_to_latents: expected {name} >= 1, got {value}")
    if temperature <= 0:
        raise ValueError(f"align_to_latents: expected temperature > 0, got {temperature}")
    rows_of = _group_rows(groups, m)
    if len(rows_of) < 2:
        raise ValueError(f"align_to_latents: expected at least 2 groups for a contrastive loss, got {len(rows_of)}")

    flat = latents.detach().reshape(m, -1).float()  # (M, L)
    if projection is None:
        projection = LatentProjection(flat.shape[1], cast(int, conditioner.dim), proj_dim=proj_dim)
    elif proj_dim is not None and proj_dim != projection.proj_dim:
        raise ValueError(f"align_to_latents: proj_dim={proj_dim} disagrees with projection.proj_dim={projection.proj_dim}")
    param = next(conditioner.parameters(), None)
    device = param.device if param is not None else next(projection.parameters()).device
    projection.to(device)
    flat = flat.to(device)
    params = [p for p in (*conditioner.parameters(), *projection.parameters()) if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    n = min(batch_size, len(rows_of))
    target = torch.arange(n, device=device)  # (n,)
    # Draws are picked from a stream of their own, so the batches are those of plain conditions.
    draws = torch.Generator().manual_seed((generator.initial_seed() if generator is not None else torch.initial_seed()) ^ 0x9E3779B97F4A7C15)
    losses: list[torch.Tensor] = []
    conditioner.train()
    projection.train()
    for _ in (bar := tqdm(range(steps), disable=not progress, desc="align")):
        # Batches are chosen on the host (they index the Python list of raw conditions);
        # the draws come from the generator on its own device.
        chosen = randperm(len(rows_of), generator=generator, device="cpu")[:n].tolist()
        picks = randint(2**62, (n,), generator=generator, device="cpu").tolist()
        idx = [rows_of[g][p % len(rows_of[g])] for g, p in zip(chosen, picks, strict=True)]
        c = projection.conditions(conditioner(pick_draws([raw[i] for i in idx], draws)).to(device))  # (n, P); a fresh draw of each Draws
        z = projection.latents(flat[torch.tensor(idx, device=device)])  # (n, P)
        logits = c @ z.T / temperature  # (n, n): condition i vs latent j
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())  # read back once at the end: no device sync per step
        if progress:
            bar.set_postfix(loss=f"{losses[-1].item():.4f}", refresh=False)
    conditioner.requires_grad_(False).eval()
    projection.requires_grad_(False).eval()
    return torch.stack(losses).tolist()


@torch.no_grad()
def retrieval_accuracy(
    conditioner: nn.Module,
    raw: Sequence[Any],
    latents: torch.Tensor,
    projection: LatentProjection,
    *,
    groups: Sequence[str] | None = None,
    batch_size: int = 256,
) -> float:
    """Fraction of conditions whose nearest latent (cosine, in the shared space) is of their own group.

    With ``G`` groups of equal size chance is ``1 / G``.

    Args:
        conditioner: An aligned conditioner (evaluated in its current mode).
        raw: ``M`` raw conditions, one per latent row.
        latents: ``(M, *latent_shape)`` latents.
        projection: The `LatentProjection` trained by `align_to_latents`.
        groups: The task of each row; ``None`` counts only the row itself as a hit.
        batch_size: Conditions per conditioner call.

    Returns:
        Top-1 retrieval accuracy in ``[0, 1]``.

    Examples:
        >>> import torch
        >>> from paramgen.conditioners import OneHotConditioner
        >>> proj = LatentProjection(3, 3)
        >>> with torch.no_grad():
        ...     _ = proj.latent_proj.weight.copy_(torch.eye(3))
        ...     _ = proj.latent_proj.bias.zero_()
        >>> retrieval_accuracy(OneHotConditioner(["a", "b", "c"]), ["a", "b", "c"], torch.eye(3), proj)
        1.0
    """
    m = latents.shape[0]
    if len(raw) != m:
        raise ValueError(f"retrieval_accuracy: expected one raw condition per latent ({m}), got {len(raw)}")
    labels = list(range(m)) if groups is None else [str(g) for g in groups]
    if len(labels) != m:
        raise ValueError(f"retrieval_accuracy: expected {m} groups, got {len(labels)}")
    c = torch.cat([conditioner([raw[j] for j in range(i, min(i + batch_size, m))]) for i in range(0, m, batch_size)])
    param = next(projection.parameters())
    c = projection.conditions(c.to(param.device))  # (M, P)
    z = projection.latents(latents.reshape(m, -1).float().to(param.device))  # (M, P)
    nearest = (c @ z.T).argmax(dim=1).tolist()  # (M,)
    return sum(labels[i] == labels[j] for i, j in enumerate(nearest)) / m
