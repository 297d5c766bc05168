"""The stages of `paramgen.training.fit` after the normalizer: tokenizer, latents, align, prior."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch
from torch import nn

from paramgen.draws import draw_table, has_draws, pick_draws
from paramgen.generator import Generator
from paramgen.interfaces import LatentStats
from paramgen.training.checkpoint import Saved
from paramgen.training.config import NonFiniteLossError
from paramgen.training.engine import LossModule, Run, gradient_loop, stream_seed, trainable_parameters

__all__ = ["AlignResult", "Behaviour", "final_loss", "tokenizer_stage", "latents_stage", "align_stage", "prior_stage"]

logger = logging.getLogger("paramgen.training")


#: ``behaviour(decoded, batch) -> scalar loss``: see `paramgen.training.fit`.
Behaviour = Callable[[torch.Tensor, dict[str, Any]], torch.Tensor]


def tokenizer_stage(
    run: Run,
    generator: Generator,
    rows: torch.utils.data.Dataset,
    predictor: nn.Module | None,
    start: int,
    saved: Saved | None,
    save: Callable,
    behaviour: Behaviour | None = None,
) -> None:
    """Train the tokenizer on the rows (nothing when it has no weights or ``tokenizer_steps=0``).

    A positional tokenizer (``positional = True``, e.g.
    `paramgen.tokenizers.PositionalVAETokenizer`) gets each batch's ``"position"``. With
    ``behaviour``, the steps ``1, 1 + behaviour_every, ...`` add ``behaviour_weight *
    behaviour(decoded, batch)`` to the loss, ``decoded`` being the decoding of the loss's
    latents (a VAE's posterior mean, without the sampling noise: the reconstruction
    encode-decode gives) as ``(B, N * C)`` rows, differentiable (logged as the
    ``behaviour`` metric on those steps).
    """
    tok = generator.tokenizer
    if not trainable_parameters(tok) or run.config.tokenizer_steps == 0:
        return
    extra = {"predictor": predictor} if predictor is not None else {}
    shared = getattr(rows, "shared", None)
    shared = None if shared is None else shared.to(run.device)  # (N, C), moved once
    positional = bool(getattr(tok, "positional", False))
    weight, every = run.config.behaviour_weight, run.config.behaviour_every

    def where(batch: dict[str, Any]) -> dict[str, Any]:
        if not positional:
            return {}
        if batch.get("position") is None:
            raise ValueError(
                f"the tokenizer ({type(tok).__name__}) is positional: every training item needs a 'position' "
                "(its chunk id, as paramgen.chunkwise.ChunkSamples gives it)"
            )
        return {"position": batch["position"]}

    def loss(batch: dict[str, Any], g: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        mask = shared if batch["mask"] is None else batch["mask"]
        position = where(batch)
        out = tok.loss(batch["x"], mask=mask, generator=g, **extra, **position)
        assert out.loss is not None  # a trainable tokenizer returns a loss
        total, metrics = out.loss, dict(out.metrics)
        if behaviour is not None and (module.step - 1) % every == 0:
            # The decoding of the loss's latents (a VAE's posterior mean): what encode-decode
            # gives at inference, from the encoder pass the loss already made, differentiable.
            decoded = tok.decode(out.latents, **position)
            value = behaviour(decoded.flatten(1), batch)  # (B, N * C) rows
            if not isinstance(value, torch.Tensor) or value.ndim != 0:
                got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
                raise TypeError(f"fit: behaviour(decoded, batch) must return a scalar (0-dim) tensor, got {got}")
            total = total + weight * value
            metrics["behaviour"] = value.detach()
        return total, metrics

    module = LossModule(loss, tokenizer=tok)
    gradient_loop(run, "tokenizer", module, rows, steps=run.config.tokenizer_steps, lr=run.config.tokenizer_lr, start=start, saved=saved, save=save)


@attrs.frozen
class _Encoded:
    z: torch.Tensor  # (M, *latent_shape) standardized latents, or (M, L) token ids; on the device
    latents: torch.Tensor | None  # (M, *latent_shape) quantized latents of a discrete tokenizer (for alignment)
    conds: list[Any] | None
    tasks: list[str] | None


def latents_stage(run: Run, generator: Generator, rows: torch.utils.data.Dataset, *, want_latents: bool) -> _Encoded:
    """Latents (or token ids) of every model, on the device, with their conditions and
    tasks (`paramgen.Generator.encode_zoo`); fixes the latent statistics."""
    enc = generator.encode_zoo(rows, batch_size=run.config.encode_batch_size, num_workers=run.config.num_workers, latents=want_latents)
    latents = enc.codes
    # The losses skip value checks on an accelerator (paramgen._validate): check once here.
    if latents.is_floating_point() and not torch.isfinite(latents).all():
        raise NonFiniteLossError("fit: the tokenizer encoded some models to NaN or Inf latents (check the zoo for non-finite weights)")
    if generator.discrete:
        generator.latent_stats = LatentStats(mean=0.0, scale=1.0)
        z = latents.reshape(len(latents), -1)  # (M, L) token ids
        return _Encoded(z, enc.latents, enc.conds, enc.tasks)
    mean, std = float(latents.mean()), float(latents.std()) if latents.numel() > 1 else 1.0
    generator.latent_stats = LatentStats(mean=mean, scale=std if std > 0 else 1.0)
    return _Encoded(generator.latent_stats.standardize(latents), None, enc.conds, enc.tasks)  # (M, *latent_shape)


@attrs.frozen
class AlignResult:
    """What `align_stage` did: the final training loss of each restart and which one was kept.

    ``final_losses[r]`` is the mean loss of restart ``r``'s last ``max(1, steps // 10)``
    steps; ``spread`` is their range (max - min), 0 with one restart.
    """

    final_losses: tuple[float, ...]
    best: int

    @property
    def spread(self) -> float:
        return max(self.final_losses) - min(self.final_losses)


def final_loss(losses: Sequence[float]) -> float:
    """The final training loss of an alignment run: the mean of its last ``max(1, len // 10)``
    step losses (one step's batch is too noisy to rank restarts by)."""
    tail = losses[-max(1, len(losses) // 10) :]
    return sum(tail) / len(tail)


def align_stage(run: Run, generator: Generator, enc: _Encoded) -> AlignResult | None:
    """Align the conditioner with the latents contrastively (D2NWG Alg. 2), seeded by the run.

    With ``config.align_restarts = R > 1`` the alignment runs ``R`` times: restart 0 from the
    conditioner as given (exactly the single run of ``R = 1``), restart ``r`` from a fresh
    seeded initialization of its trainable weights
    (`paramgen.conditioners.align.reinitialize`) and its own batch stream; the conditioner
    keeps the weights of the restart with the lowest final training loss (`final_loss`).
    Each restart's final loss is logged (``align/restart_loss`` at step ``r``), then
    ``align/best_restart`` and ``align/restart_spread``.
    """
    from paramgen.conditioners.align import align_to_latents, reinitialize

    if run.config.align_steps == 0:
        return None
    conditioner, conds = generator.conditioner, enc.conds
    if not isinstance(conditioner, nn.Module) or conds is None:
        raise ValueError("the align stage needs a trainable conditioner (an nn.Module) and conds")
    latents = enc.latents if generator.discrete else enc.z
    if latents is None:
        raise ValueError("the align stage needs the quantized latents of the discrete tokenizer")
    target = latents.flatten(1)
    restarts, steps, seed = run.config.align_restarts, run.config.align_steps, run.config.seed
    trainable = [p.requires_grad for p in conditioner.parameters()]
    initial = {k: v.detach().clone() for k, v in conditioner.state_dict().items()} if restarts > 1 else None
    best_state: dict[str, torch.Tensor] | None = None
    finals: list[float] = []
    for r in range(restarts):
        # Restart 0 keeps the streams of a single run, so R = 1 is the run it always was.
        tag: tuple[Any, ...] = () if r == 0 else (r,)
        if r > 0:
            assert initial is not None
            conditioner.load_state_dict(initial)
            for p, flag in zip(conditioner.parameters(), trainable, strict=True):
                p.requires_grad_(flag)
            reinitialize(conditioner, generator=torch.Generator().manual_seed(stream_seed(seed, "align", "reinit", r)))
        # The projection head is initialized from the global RNG: fork it, seeded, so that the
        # stage is reproducible and leaves the caller's RNG as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed(seed, "align", "init", *tag))
            g = torch.Generator().manual_seed(stream_seed(seed, "align", "batches", *tag))
            losses = align_to_latents(
                conditioner, conds, target, groups=enc.tasks, steps=steps,
                batch_size=run.config.batch_size, lr=run.config.align_lr, generator=g, progress=run.config.progress and run.main,
            )
        finals.append(final_loss(losses))
        if run.main:
            if restarts > 1:
                run.log.log_metrics({"align/restart_loss": finals[-1]}, step=r)
                logger.info("align restart %d/%d: final loss %.4g (last step %.4g, first %.4g)", r + 1, restarts, finals[-1], losses[-1], losses[0])
            else:
                run.log.log_metrics({"align/loss_first": losses[0], "align/loss_last": losses[-1]}, step=steps)
                logger.info("align step %d/%d: loss=%.4g (first step: %.4g)", steps, steps, losses[-1], losses[0])
        if restarts > 1 and finals[-1] < min(finals[:-1], default=float("inf")):  # ties keep the earlier restart
            best_state = {k: v.detach().clone() for k, v in conditioner.state_dict().items()}
    result = AlignResult(tuple(finals), min(range(restarts), key=finals.__getitem__))
    if best_state is not None:
        conditioner.load_state_dict(best_state)
        conditioner.requires_grad_(False).eval()
    if run.main and restarts > 1:
        run.log.log_metrics({"align/best_restart": result.best, "align/restart_spread": result.spread}, step=steps)
        logger.info("align: kept restart %d of %d (final losses %s; spread %.4g)", result.best + 1, restarts, ", ".join(f"{x:.4g}" for x in finals), result.spread)
    return result


class _Latents(torch.utils.data.Dataset):
    """Latents (on the device) with fixed condition vectors or raw conditions."""

    def __init__(self, z: torch.Tensor, c: torch.Tensor | None, raw: Sequence[Any] | None) -> None:
        self.z, self.c, self.raw = z, c, raw

    def __len__(self) -> int:
        return len(self.z)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]) -> dict[str, Any]:
        index = torch.as_tensor(idx, dtype=torch.long, device=self.z.device)
        return {
            "z": self.z[index],
            "c": None if self.c is None else self.c[index],
            "raw": None if self.raw is None or self.c is not None else [self.raw[i] for i in idx],
        }


def _draws_stream(g: torch.Generator) -> torch.Generator:
    """A CPU stream for picking draws, seeded from the step's noise seed without drawing from
    it (the prior's noise is the same with or without `paramgen.draws.Draws`)."""
    return torch.Generator().manual_seed(stream_seed(g.initial_seed(), "draws"))


def _draw_conditions(run: Run, generator: Generator, conds: Sequence[Any] | None) -> torch.Tensor:
    """Condition vectors ``(M, Dc)``, or ``(M, P, Dc)`` when some conditions are `paramgen.draws.Draws`
    (every draw encoded once; a condition with fewer than ``P`` draws cycles through its own)."""
    if not has_draws(conds):
        return _conditions(run, generator, conds)
    assert conds is not None
    flat, table = draw_table(conds)
    vectors = _conditions(run, generator, flat)  # (N, Dc)
    return vectors[table.to(vectors.device)]  # (M, P, Dc)


def _conditions(run: Run, generator: Generator, conds: Sequence[Any] | None) -> torch.Tensor:
    if conds is None:
        raise ValueError(f"this generator is conditioned by {type(generator.conditioner).__name__}: every model needs a raw condition")
    n, b = len(conds), run.config.encode_batch_size
    parts: list[torch.Tensor] = []
    with torch.no_grad():
        for i in range(0, n, b):
            part = generator.condition(list(conds[i : i + b]))
            assert part is not None  # a generator with a conditioner returns vectors
            parts.append(part)
    c = torch.cat(parts)
    if not torch.isfinite(c).all():
        raise ValueError("fit: the conditioner turned some conditions into NaN or Inf vectors")
    return c


def prior_stage(run: Run, generator: Generator, enc: _Encoded, start: int, saved: Saved | None, save: Callable) -> None:
    """Fit the prior on the standardized latents (or tokens) given the conditions: in closed
    form for a prior with ``fit`` (the KDE), else by gradient steps with a trainable conditioner."""
    prior, conditioner = generator.prior, generator.conditioner
    z = enc.z
    cond_params = trainable_parameters(conditioner)
    fixed = _draw_conditions(run, generator, enc.conds) if conditioner is not None and not cond_params else None  # (M, Dc) or (M, P, Dc)
    if hasattr(prior, "fit"):
        c_all = fixed if fixed is not None or conditioner is None else _draw_conditions(run, generator, enc.conds)
        if c_all is not None and c_all.dim() == 3:  # several draws: every (latent, draw) pair
            m, p = c_all.shape[:2]
            z, c_all = z.repeat_interleave(p, dim=0), c_all.reshape(m * p, -1)
        prior.fit(z, c_all)
        return
    if run.config.prior_steps == 0:
        return
    if isinstance(conditioner, nn.Module) and not cond_params:
        conditioner.eval()

    def loss(batch: dict[str, Any], g: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        if batch["c"] is not None:
            c = batch["c"]
            if c.dim() == 3:  # (B, P, Dc): one of each row's draws, fresh at every step
                j = torch.randint(c.shape[1], (c.shape[0],), generator=_draws_stream(g)).to(c.device)
                c = c[torch.arange(c.shape[0], device=c.device), j]
        elif conditioner is not None:
            raw = batch["raw"]
            if has_draws(raw):
                raw = pick_draws(raw, _draws_stream(g))
            c = generator.condition(raw)
        else:
            c = None
        return prior.loss(batch["z"], c, generator=g), {}

    parts = {"prior": prior} | ({"conditioner": conditioner} if cond_params else {})
    raw = None if conditioner is None or fixed is not None else enc.conds
    gradient_loop(
        run, "prior", LossModule(loss, **parts), _Latents(z, fixed, raw), steps=run.config.prior_steps, lr=run.config.prior_lr,
        start=start, saved=saved, save=save, update_ema=getattr(prior, "update_ema", None),
    )

