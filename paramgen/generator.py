"""The `Generator`: a vectorizer, a tokenizer, a prior and a conditioner composed.

Fitting is staged, as in D2NWG: the normalizer and the tokenizer learn the weights, the
latents are standardized to unit scale (generation collapses when they are not; see
METHODS.md), an optional contrastive stage aligns the conditioner with the latents, and
the prior learns the latents given the conditions. Sampling runs the pipeline backwards:

    raw conditions -> Conditioner -> (B, Dc) -> Prior.sample -> latents -> Tokenizer.decode
    -> rows (B, N, C) -> Vectorizer.unpack -> Normalizer.inverse -> state dicts

Every component can be swapped (an identity tokenizer gives diffusion on raw weights, a
KDE prior gives the S_KDE baseline); `Generator.save_pretrained` stores the whole
pipeline as ``config.json`` + ``weights.safetensors`` and `Generator.from_pretrained`
rebuilds it.

One generator can serve a whole family of architectures (IGPG): give it a
`paramgen.vectorize.FamilyVectorizer` and an ``archs`` key per model to `fit`,
`sample` and `reconstruct`; the architecture also belongs in the condition (e.g. a
`paramgen.conditioners.ArchitectureConditioner` joined to the data condition), since the
prior must know which network it is writing.

Examples:
    >>> import torch
    >>> from paramgen.spec import ParamSpec
    >>> from paramgen.vectorize import ModelVectorizer
    >>> from paramgen.tokenizers import IdentityTokenizer
    >>> from paramgen.priors import KDEPrior
    >>> net = torch.nn.Linear(4, 2)
    >>> vec = ModelVectorizer(ParamSpec.from_module(net))
    >>> gen = Generator(vectorizer=vec, tokenizer=IdentityTokenizer(rows=1, width=10), prior=KDEPrior())
    >>> zoo = torch.randn(32, 10)  # 32 flat checkpoints
    >>> gen = gen.fit(zoo, progress=False)
    >>> net.load_state_dict(gen.sample(n=1, generator=torch.Generator().manual_seed(0))[0])
    <All keys matched successfully>
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from paramgen.interfaces import Conditioner, Prior, Tokenizer, Vectorizer
from paramgen.io import read_json, save_safetensors, write_json
from paramgen.normalize import GlobalScale, Normalizer, normalizer_from_config
from paramgen.spec import ParamSpec, SpecMismatchError
from paramgen.tracking import Logger, NullLogger
from paramgen.vectorize import FamilyVectorizer, vectorizer_from_config

__all__ = ["Generator", "NotFittedError"]

logger = logging.getLogger(__name__)

FORMAT = "paramgen.Generator"
FORMAT_VERSION = 1


class NotFittedError(RuntimeError):
    """A generator was used before `Generator.fit` or `Generator.from_pretrained`."""


def _require(obj: Any, protocol: type, role: str) -> None:
    if not isinstance(obj, protocol):
        verbs = sorted(n for n in vars(protocol) if not n.startswith("_")) + sorted(getattr(protocol, "__annotations__", {}))
        raise TypeError(f"{role} must implement the {protocol.__name__} protocol ({', '.join(verbs)}), got {type(obj).__name__}")


def _class_path(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def _import(path: str) -> Any:
    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _trainable(obj: Any) -> list[nn.Parameter]:
    return [p for p in obj.parameters() if p.requires_grad] if isinstance(obj, nn.Module) else []


def _by_arch(archs: Sequence[str]) -> dict[str, list[int]]:
    """Row indices of each architecture, in order of first appearance."""
    rows: dict[str, list[int]] = {}
    for i, a in enumerate(archs):
        rows.setdefault(a, []).append(i)
    return rows


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class Generator:
    """Composes components into a weight generator.

    Args:
        vectorizer: How weights are laid out; fixes the architecture (``vectorizer.spec``),
            or, a `FamilyVectorizer`, the architectures of a family (``vectorizer.specs``).
        tokenizer: Rows to latents and back; has ``latent_shape``.
        prior: Generative model over latents of ``tokenizer.latent_shape``.
        conditioner: Raw conditions to vectors; ``None`` for an unconditional generator.
        normalizer: Normalizer fitted in `fit`; ``None`` to model raw weights. A family
            takes only `GlobalScale` (statistics that do not depend on the architecture,
            so that unseen members can be de-normalized too).
    """

    def __init__(
        self,
        *,
        vectorizer: Vectorizer | FamilyVectorizer,
        tokenizer: Tokenizer,
        prior: Prior,
        conditioner: Conditioner | None = None,
        normalizer: Normalizer | None = None,
    ) -> None:
        self.family = isinstance(vectorizer, FamilyVectorizer)
        if not self.family:
            _require(vectorizer, Vectorizer, "vectorizer")
        elif normalizer is not None and not isinstance(normalizer, GlobalScale):
            raise TypeError(
                f"a FamilyVectorizer generator takes normalizer=None or GlobalScale (architecture-independent statistics), got {type(normalizer).__name__}"
            )
        _require(tokenizer, Tokenizer, "tokenizer")
        _require(prior, Prior, "prior")
        if conditioner is not None:
            _require(conditioner, Conditioner, "conditioner")
        if normalizer is not None:
            _require(normalizer, Normalizer, "normalizer")
        # A prior over tokens (it has a vocabulary) pairs with a discrete tokenizer.
        self.discrete = hasattr(prior, "vocab_size")
        if self.discrete:
            if not hasattr(tokenizer, "decode_indices"):
                raise TypeError(f"a token prior ({type(prior).__name__}) needs a discrete tokenizer with decode_indices, got {type(tokenizer).__name__}")
            if prior.vocab_size != tokenizer.codebook_size:
                raise ValueError(f"prior vocabulary {prior.vocab_size} does not match the codebook size {tokenizer.codebook_size}")
            shape = getattr(tokenizer, "tokens_shape", None)
        else:
            shape = getattr(tokenizer, "latent_shape", None)
        prior_shape = getattr(prior, "shape", None)
        if shape is not None and prior_shape is not None and tuple(prior_shape) != tuple(shape):
            raise ValueError(f"prior shape {tuple(prior_shape)} does not match the tokenizer's {'token' if self.discrete else 'latent'} shape {tuple(shape)}")
        rows = getattr(tokenizer, "rows", vectorizer.rows)
        width = getattr(tokenizer, "width", vectorizer.width)
        if (rows, width) != (vectorizer.rows, vectorizer.width):
            raise ValueError(f"tokenizer expects rows of ({rows}, {width}), the vectorizer makes ({vectorizer.rows}, {vectorizer.width})")
        cond_dim = getattr(prior, "cond_dim", None)
        if conditioner is not None and cond_dim is not None and cond_dim != conditioner.dim:
            raise ValueError(f"prior takes conditions of dim {cond_dim}, the conditioner makes {conditioner.dim}")
        if conditioner is None and cond_dim:
            raise ValueError(f"prior is conditional (cond_dim={cond_dim}) but no conditioner was given")
        self.vectorizer = vectorizer
        self.tokenizer = tokenizer
        self.prior = prior
        self.conditioner = conditioner
        self.normalizer = normalizer
        self.latent_mean = 0.0
        self.latent_scale = 1.0
        self.fitted = False

    @property
    def spec(self) -> ParamSpec:
        """The architecture this generator produces (see `specs` for a family)."""
        if self.family:
            raise AttributeError("this generator serves a family of architectures: use generator.specs[arch]")
        return self.vectorizer.spec  # type: ignore[union-attr]

    @property
    def specs(self) -> dict[str, ParamSpec]:
        """Architecture key -> spec (one entry, ``"model"``, for a single architecture)."""
        return self.vectorizer.specs if self.family else {"model": self.vectorizer.spec}  # type: ignore[union-attr]

    # ------------------------------------------------------------------ data plumbing
    def _check_flat(self, flat: torch.Tensor) -> None:
        d = self.spec.numel
        if flat.ndim != 2 or flat.shape[1] != d:
            raise SpecMismatchError(f"expected flat weight vectors of shape (M, {d}), got {tuple(flat.shape)}")

    def _check_archs(self, archs: Sequence[str] | None, m: int) -> list[str] | None:
        if not self.family:
            if archs is not None:
                raise ValueError("archs= is for a generator over a FamilyVectorizer; this one has a single architecture")
            return None
        if archs is None or isinstance(archs, str) or len(archs) != m:
            raise ValueError(f"a family generator needs one architecture key per model ({m}), got {archs if archs is None or isinstance(archs, str) else len(archs)}")
        for a in set(archs):
            self.vectorizer.member(a)  # type: ignore[union-attr]  # KeyError naming the known keys
        return list(archs)

    def _rows(self, flat: torch.Tensor | Sequence[torch.Tensor], tasks: Sequence[str] | None, archs: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized rows ``(M, N, C)`` and their mask (``(N, C)``, or ``(M, N, C)`` for a family)."""
        if archs is None:
            self._check_flat(flat)  # type: ignore[arg-type]
            x = flat.float()  # type: ignore[union-attr]
            if self.normalizer is not None:
                x = self.normalizer.transform(x, tasks=tasks)
            return self.vectorizer.pack(x), self.vectorizer.mask  # type: ignore[call-arg, union-attr]
        fam: FamilyVectorizer = self.vectorizer  # type: ignore[assignment]
        x = torch.zeros(len(archs), fam.rows, fam.width)
        mask = torch.zeros(len(archs), fam.rows, fam.width, dtype=torch.bool)
        for a, idx in _by_arch(archs).items():
            spec = fam.member(a).spec
            d = spec.numel
            bad = next((i for i in idx if flat[i].numel() != d), None)
            if bad is not None:
                raise SpecMismatchError(f"model {bad} is labelled {a!r} ({d} weights) but has {flat[bad].numel()} values")
            fa = torch.stack([flat[i].reshape(-1).float() for i in idx])
            if self.normalizer is not None:
                fa = self.normalizer.transform(fa, spec=spec)  # type: ignore[call-arg]
            x[idx] = fam.pack(fa, a)
            mask[idx] = fam.mask_of(a)
        return x, mask

    def _flat(self, rows: torch.Tensor, tasks: Sequence[str] | None, archs: list[str] | None = None) -> torch.Tensor | list[torch.Tensor]:
        if archs is None:
            flat = self.vectorizer.unpack(rows)  # type: ignore[call-arg]
            if self.normalizer is not None:
                flat = self.normalizer.inverse(flat, tasks=tasks)
            return flat
        out: list[torch.Tensor] = [None] * len(archs)  # type: ignore[list-item]
        for a, idx in _by_arch(archs).items():
            fa = self.vectorizer.unpack(rows[idx], a)  # type: ignore[call-arg]
            if self.normalizer is not None:
                fa = self.normalizer.inverse(fa, spec=self.vectorizer.specs[a])  # type: ignore[call-arg, union-attr]
            for j, i in enumerate(idx):
                out[i] = fa[j]
        return out

    def condition(self, cond: Any) -> torch.Tensor | None:
        """Raw conditions (a sequence, one per model) to vectors ``(B, Dc)``."""
        if self.conditioner is None:
            if cond is not None:
                raise ValueError("this generator is unconditional; pass cond=None")
            return None
        if cond is None:
            raise ValueError(f"this generator is conditioned by {type(self.conditioner).__name__}; pass cond (a sequence of raw conditions)")
        if isinstance(cond, (str, bytes)) or not isinstance(cond, Sequence):
            raise TypeError(f"cond must be a sequence of raw conditions (one per model), got {type(cond).__name__}")
        c = self.conditioner(cond)
        if c.ndim != 2 or c.shape != (len(cond), self.conditioner.dim):
            raise ValueError(f"conditioner returned shape {tuple(c.shape)}, expected ({len(cond)}, {self.conditioner.dim})")
        return c

    def _encode_all(self, x: torch.Tensor, mask: torch.Tensor, batch_size: int, *, indices: bool = False) -> torch.Tensor:
        """Latents (or, with ``indices``, token ids) of all rows, in eval mode."""
        if isinstance(self.tokenizer, nn.Module):
            self.tokenizer.eval()
        with torch.no_grad():
            outs = [self.tokenizer.encode(x[s], mask=mask[s] if mask.ndim == 3 else mask) for s in _batches(len(x), batch_size)]
        return torch.cat([o.indices if indices else o.latents for o in outs])  # type: ignore[misc]

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        flat: torch.Tensor | Sequence[torch.Tensor],
        conds: Sequence[Any] | None = None,
        *,
        tasks: Sequence[str] | None = None,
        archs: Sequence[str] | None = None,
        tokenizer_steps: int = 2000,
        align_steps: int = 0,
        prior_steps: int = 5000,
        batch_size: int = 64,
        tokenizer_lr: float = 1e-3,
        prior_lr: float = 1e-4,
        weight_decay: float = 0.0,
        predictor: nn.Module | None = None,
        generator: torch.Generator | None = None,
        progress: bool = True,
        tracker: Logger | None = None,
        log_every: int = 100,
    ) -> Generator:
        """Fit every stage on a zoo.

        Args:
            flat: ``(M, D)`` weight vectors in spec order (e.g. ``Zoo.flatten()[0]``); for a
                family, a sequence of ``M`` flat vectors of their own architectures.
            conds: One raw condition per row, for the conditioner.
            tasks: Task name per row (for a per-task normalizer and contrastive groups).
            archs: For a family: the architecture key of each row.
            tokenizer_steps: Optimizer steps of the tokenizer stage (skipped if it has no
                trainable weights).
            align_steps: Steps of contrastive alignment of the conditioner with the
                latents (D2NWG Alg. 2); the conditioner is frozen afterwards.
            prior_steps: Optimizer steps of the prior (a prior with ``fit`` is fitted
                directly). Trainable conditioner weights learn jointly with the prior.
            batch_size: Models per step.
            tokenizer_lr: AdamW learning rate of the tokenizer stage.
            prior_lr: AdamW learning rate of the prior stage (D2NWG: 1e-4).
            weight_decay: AdamW weight decay.
            predictor: Frozen accuracy predictor for the predictor-guided VAE loss.
            generator: All randomness of fitting (batches, noise, reparameterization).
            progress: Show tqdm progress bars.
            tracker: Receives losses every ``log_every`` steps.
            log_every: Logging period in steps.
        """
        from tqdm.auto import tqdm

        m = len(flat)
        arch_list = self._check_archs(archs, m)
        if arch_list is None:
            self._check_flat(flat)  # type: ignore[arg-type]
        if self.conditioner is not None and (conds is None or len(conds) != m):
            raise ValueError(f"expected one raw condition per weight vector ({m}), got {None if conds is None else len(conds)}")
        if self.conditioner is None and conds is not None:
            raise ValueError("this generator is unconditional; pass conds=None")
        if tasks is not None and len(tasks) != m:
            raise ValueError(f"expected one task name per weight vector ({m}), got {len(tasks)}")
        log = tracker or NullLogger()
        g = generator

        # Stage 0: normalization statistics.
        if self.normalizer is not None and arch_list is None:
            self.normalizer.fit(flat.float(), tasks=tasks)  # type: ignore[union-attr]
        elif self.normalizer is not None:
            groups = [(torch.stack([flat[i].reshape(-1).float() for i in idx]), self.vectorizer.specs[a]) for a, idx in _by_arch(arch_list).items()]  # type: ignore[union-attr]
            self.normalizer.fit_groups(groups)  # type: ignore[attr-defined]
        x, mask = self._rows(flat, tasks, arch_list)  # (M, N, C); mask (N, C) or (M, N, C)

        # Stage 1: the tokenizer.
        params = _trainable(self.tokenizer)
        if params and tokenizer_steps > 0:
            self.tokenizer.train()
            opt = torch.optim.AdamW(params, lr=tokenizer_lr, weight_decay=weight_decay)
            for step in tqdm(range(1, tokenizer_steps + 1), desc="tokenizer", disable=not progress):
                idx = torch.randint(0, m, (min(batch_size, m),), generator=g)
                out = self.tokenizer.loss(x[idx], mask=mask[idx] if mask.ndim == 3 else mask, generator=g, **({"predictor": predictor} if predictor is not None else {}))
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                opt.step()
                if step % log_every == 0 or step == tokenizer_steps:
                    log.log_metrics({"tokenizer/loss": out.loss.item(), **{f"tokenizer/{k}": v for k, v in out.metrics.items()}}, step=step)

        if self.discrete:
            z = self._encode_all(x, mask, 256, indices=True).reshape(m, -1)  # (M, L) token ids
        else:
            # Latents at unit scale: diffusion on badly scaled latents collapses.
            latents = self._encode_all(x, mask, 256)
            self.latent_mean = float(latents.mean())
            self.latent_scale = float(latents.std()) or 1.0
            z = (latents - self.latent_mean) / self.latent_scale  # (M, *latent_shape)

        # Stage 2: contrastive alignment of the conditioner (D2NWG Alg. 2).
        if align_steps > 0:
            from paramgen.conditioners.imageset import align_to_latents

            if conds is None:
                raise ValueError("alignment needs conds")
            target = self._encode_all(x, mask, 256).flatten(1) if self.discrete else z.flatten(1)
            losses = align_to_latents(self.conditioner, conds, target, groups=tasks, steps=align_steps, batch_size=batch_size, generator=g, progress=progress)
            log.log_metrics({"align/loss_first": losses[0], "align/loss_last": losses[-1]}, step=align_steps)

        # Stage 3: the prior.
        cond_params = _trainable(self.conditioner) if self.conditioner is not None else []
        fixed_c: torch.Tensor | None = None
        if self.conditioner is not None and not cond_params:
            with torch.no_grad():
                fixed_c = torch.cat([self.condition(list(conds[s])) for s in _batches(m, 256)])  # type: ignore[index]
        if hasattr(self.prior, "fit"):
            c_all = fixed_c
            if self.conditioner is not None and c_all is None:
                with torch.no_grad():
                    c_all = torch.cat([self.condition(list(conds[s])) for s in _batches(m, 256)])  # type: ignore[index]
            self.prior.fit(z, c_all)
        else:
            params = _trainable(self.prior) + cond_params
            if isinstance(self.prior, nn.Module):
                self.prior.train()
            if isinstance(self.conditioner, nn.Module) and cond_params:
                self.conditioner.train()
            opt = torch.optim.AdamW(params, lr=prior_lr, weight_decay=weight_decay)
            for step in tqdm(range(1, prior_steps + 1), desc="prior", disable=not progress):
                idx = torch.randint(0, m, (min(batch_size, m),), generator=g)
                if fixed_c is not None:
                    c = fixed_c[idx]
                elif self.conditioner is not None:
                    c = self.condition([conds[i] for i in idx.tolist()])  # type: ignore[index]
                else:
                    c = None
                loss = self.prior.loss(z[idx], c, generator=g)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if hasattr(self.prior, "update_ema"):
                    self.prior.update_ema()
                if step % log_every == 0 or step == prior_steps:
                    log.log_metrics({"prior/loss": loss.item()}, step=step)
        for part in (self.tokenizer, self.prior, self.conditioner):
            if isinstance(part, nn.Module):
                part.eval()
        self.fitted = True
        return self

    # ------------------------------------------------------------------ sampling
    def _require_fitted(self) -> None:
        if not self.fitted:
            raise NotFittedError("this generator is not fitted: call fit() or load one with Generator.from_pretrained()")

    @torch.no_grad()
    def reconstruct(
        self,
        flat: torch.Tensor | Sequence[torch.Tensor],
        *,
        tasks: Sequence[str] | None = None,
        archs: Sequence[str] | None = None,
        batch_size: int = 256,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Encode and decode weight vectors ``(M, D)``: what the tokenizer alone preserves.

        For a family, ``flat`` is a sequence of vectors with their ``archs``, and so is the result.
        """
        self._require_fitted()
        arch_list = self._check_archs(archs, len(flat))
        x, mask = self._rows(flat, tasks, arch_list)
        if self.discrete:
            ids = self._encode_all(x, mask, batch_size, indices=True)
            rows = torch.cat([self.tokenizer.decode_indices(ids[s]) for s in _batches(len(ids), batch_size)])  # type: ignore[attr-defined]
        else:
            latents = self._encode_all(x, mask, batch_size)
            rows = torch.cat([self.tokenizer.decode(latents[s]) for s in _batches(len(latents), batch_size)])
        return self._flat(rows, tasks, arch_list)

    @torch.no_grad()
    def sample_flat(
        self,
        cond: Sequence[Any] | None = None,
        n: int = 1,
        *,
        generator: torch.Generator | None = None,
        tasks: Sequence[str] | None = None,
        archs: Sequence[str] | None = None,
        batch_size: int = 256,
        **sample_kwargs: Any,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Sample ``n`` weight vectors per condition: ``(B * n, D)`` in weight scale.

        For a family, ``archs`` gives the architecture of each condition and the result
        is a list of ``B * n`` flat vectors, each of its architecture.

        Args:
            cond: A sequence of raw conditions (``None`` for an unconditional generator).
            n: Samples per condition.
            generator: Randomness of sampling; a seeded one gives identical samples.
            tasks: Task name per condition, for a per-task normalizer.
            archs: For a family: the architecture key of each condition.
            batch_size: Models decoded at once.
            **sample_kwargs: Passed to ``prior.sample`` (e.g. ``sampler="ddim"``, ``steps=50``).
        """
        self._require_fitted()
        if n < 1:
            raise ValueError(f"n must be a positive integer, got {n}")
        c = self.condition(cond)
        b = 1 if c is None else c.shape[0]
        if tasks is not None and len(tasks) != b:
            raise ValueError(f"expected one task name per condition ({b}), got {len(tasks)}")
        arch_list = self._check_archs(archs, b)
        if c is not None:
            c = c.repeat_interleave(n, dim=0)  # (B*n, Dc)
        total = b * n
        rows = []
        for s in _batches(total, batch_size):
            z = self.prior.sample(s.stop - s.start, None if c is None else c[s], generator=generator, **sample_kwargs)
            if self.discrete:
                rows.append(self.tokenizer.decode_indices(z))  # type: ignore[attr-defined]
                continue
            if not torch.isfinite(z).all():
                raise FloatingPointError("the prior produced NaN or Inf latents")
            rows.append(self.tokenizer.decode(z * self.latent_scale + self.latent_mean))
        row_tasks = None if tasks is None else [t for t in tasks for _ in range(n)]
        row_archs = None if arch_list is None else [a for a in arch_list for _ in range(n)]
        flat = self._flat(torch.cat(rows), row_tasks, row_archs)
        if not all(torch.isfinite(f).all() for f in flat):
            raise FloatingPointError(
                "generated weights contain NaN or Inf after de-normalization (e.g. exp of a huge "
                "log-normalized running_var): the prior is likely undertrained"
            )
        return flat

    def sample(
        self,
        cond: Sequence[Any] | None = None,
        n: int = 1,
        *,
        generator: torch.Generator | None = None,
        tasks: Sequence[str] | None = None,
        archs: Sequence[str] | None = None,
        base: Mapping[str, torch.Tensor] | None = None,
        batch_size: int = 256,
        **sample_kwargs: Any,
    ) -> list[dict[str, torch.Tensor]]:
        """Sample ``n`` state dicts per condition (see `sample_flat`).

        Args:
            base: State dict supplying tensors outside the generated selection.
        """
        flat = self.sample_flat(cond, n, generator=generator, tasks=tasks, archs=archs, batch_size=batch_size, **sample_kwargs)
        if not self.family:
            return self.spec.unflatten(flat, base=base)  # type: ignore[arg-type]
        row_archs = [a for a in archs for _ in range(n)]  # type: ignore[union-attr]
        return [self.specs[a].unflatten(f[None], base=base)[0] for a, f in zip(row_archs, flat)]

    def sample_into(
        self, model: nn.Module, cond: Sequence[Any] | None = None, *, generator: torch.Generator | None = None, arch: str | None = None, **kwargs: Any
    ) -> nn.Module:
        """Sample one set of weights and load it into ``model`` (which must match the spec,
        or, for a family, the spec of ``arch``)."""
        if self.family and arch is None:
            raise ValueError(f"this generator serves a family: pass arch= (one of {sorted(self.specs)})")
        spec = self.specs[arch] if self.family else self.spec  # type: ignore[index]
        if self.family:
            kwargs["archs"] = [arch]
        mine = {t.name: (t.shape, t.dtype) for t in spec.tensors}
        theirs = {t.name: (t.shape, t.dtype) for t in ParamSpec.from_module(model).tensors}
        if mine != theirs:
            diff = sorted(set(mine.items()) ^ set(theirs.items()))[:3]
            raise SpecMismatchError(f"model does not match the generator's architecture; differing tensors {diff}")
        sd = self.sample(cond, 1, generator=generator, base=model.state_dict(), **kwargs)[0]
        model.load_state_dict(sd, strict=True)
        return model

    # ------------------------------------------------------------------ persistence
    def _components(self) -> dict[str, Any]:
        parts = {"tokenizer": self.tokenizer, "prior": self.prior, "conditioner": self.conditioner, "normalizer": self.normalizer}
        return {k: v for k, v in parts.items() if v is not None}

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``weights.safetensors`` (each atomically; config last)."""
        self._require_fitted()
        path = Path(path)
        config: dict[str, Any] = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "spec": None if self.family else self.spec.to_dict(),
            "spec_id": None if self.family else self.spec.fingerprint,
            "vectorizer": self.vectorizer.config(),  # type: ignore[union-attr]
            "latent_mean": self.latent_mean,
            "latent_scale": self.latent_scale,
            "components": {},
        }
        tensors: dict[str, torch.Tensor] = {}
        for role, part in self._components().items():
            config["components"][role] = {"class": _class_path(part), "config": part.config()}
            for key, value in part.state_dict().items():
                tensors[f"{role}.{key}"] = value
        save_safetensors(path / "weights.safetensors", tensors, metadata={"format": FORMAT})
        write_json(path / "config.json", config)
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, spec: ParamSpec | None = None) -> Generator:
        """Rebuild a generator saved by `save_pretrained`.

        Args:
            path: The folder.
            spec: If given, the architecture the caller expects; a generator saved for
                another architecture raises `paramgen.spec.SpecMismatchError`.
        """
        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} holds no saved generator (no config.json)")
        config = read_json(path / "config.json")
        if config.get("format") != FORMAT:
            raise ValueError(f"{path}/config.json is not a paramgen generator (format {config.get('format')!r})")
        family = config["vectorizer"].get("type") == "family"
        vectorizer = FamilyVectorizer.from_config(config["vectorizer"]) if family else None
        saved_spec = None if family else ParamSpec.from_dict(config["spec"])
        if spec is not None and family:
            if not any(spec.fingerprint == s.fingerprint for s in vectorizer.specs.values()):  # type: ignore[union-attr]
                raise SpecMismatchError(f"the family generator in {path} has no member of the expected architecture (it has {sorted(vectorizer.specs)})")  # type: ignore[union-attr]
        elif spec is not None:
            try:
                spec.check_compatible(saved_spec)  # type: ignore[arg-type]
            except SpecMismatchError as e:
                raise SpecMismatchError(f"the generator in {path} was saved for another architecture: {e}") from e
        state = load_file(str(path / "weights.safetensors"))
        parts: dict[str, Any] = {}
        for role, entry in config["components"].items():
            sub = {k.removeprefix(f"{role}."): v for k, v in state.items() if k.startswith(f"{role}.")}
            if role == "normalizer":
                parts[role] = normalizer_from_config(entry["config"], sub, spec=saved_spec)
                continue
            part = _import(entry["class"]).from_config(entry["config"])
            if isinstance(part, nn.Module):
                part.load_state_dict(sub, strict=True)
                part.eval()
            else:
                part.load_state_dict(sub)
            parts[role] = part
        gen = cls(vectorizer=vectorizer or vectorizer_from_config(config["vectorizer"], saved_spec), **parts)  # type: ignore[arg-type]
        gen.latent_mean, gen.latent_scale = config["latent_mean"], config["latent_scale"]
        gen.fitted = True
        return gen
