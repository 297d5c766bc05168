"""The `Generator`: a vectorizer, a tokenizer, a prior and a conditioner composed.

Fitting is staged, as in D2NWG: the normalizer and the tokenizer learn the weights, the
latents are standardized to unit scale (generation collapses when they are not; see
docs/latent-diffusion.md), an optional contrastive stage aligns the conditioner with the latents, and
the prior learns the latents given the conditions. Sampling runs the pipeline backwards:

    raw conditions -> Conditioner -> (B, Dc) -> Prior.sample -> latents -> Tokenizer.decode
    -> rows (B, N, C) -> Vectorizer.unpack -> Normalizer.inverse -> state dicts

Every component can be swapped (an identity tokenizer gives diffusion on raw weights, a
KDE prior gives the S_KDE baseline); `Generator.save_pretrained` stores the whole
pipeline as ``config.json`` + ``weights.safetensors`` and `Generator.from_pretrained`
rebuilds it from registered components only (`paramgen.registry`): loading never imports
a class that a file names.

The generator holds no training loop and never imports it: `paramgen.training.fit` fits
it (`paramgen.fit` is a shortcut), through the surface documented in docs/training.md
(`Generator.layout`, `Generator.components`, `Generator.encode_zoo`, `Generator.condition`,
`Generator.check_fittable`). Devices work the PyTorch way: `Generator.to` moves every component, and
each component makes its tensors on the device of its inputs or parameters.

Given a pinned base checkpoint (``base=``, `paramgen.base.PinnedBase`), a generator of one
architecture learns the deltas ``D = w - w_base`` of the zoo's models (the normalizer's
statistics are then those of ``D``) and samples ``base + D``: fine-tunes of one
pretrained model differ from it by about 1 % of its norm, which a generator of the
weights themselves cannot resolve. The base's digest and tensors are saved with the
generator, and `Generator.from_pretrained` refuses another base.

A tokenizer whose decoder is conditioned on the chunk's position (an attribute
``positional = True``) takes ``position=`` (one global chunk id per row) in ``encode``,
``decode`` and ``loss``; `encode_zoo` passes the items' ``"position"``, and `reconstruct`
and `sample_flat` take ``positions=``. Other tokenizers are called as before, and
positions given for them are refused.

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
    >>> from paramgen.training import FitConfig, fit
    >>> gen = fit(gen, zoo, config=FitConfig(progress=False))
    >>> net.load_state_dict(gen.sample(n=1, generator=torch.Generator().manual_seed(0))[0])
    <All keys matched successfully>
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from paramgen import pretrained
from paramgen.anchors import Anchor, NearestTaskAnchor, PrototypeAnchor, anchor_from_config
from paramgen.base import PinnedBase
from paramgen.draws import has_draws
from paramgen.guidance import Guidance, LatentGuidance
from paramgen.interfaces import Conditioner, LatentStats, Prior, Tokenizer, Vectorizer, require
from paramgen.io import file_sha256, read_json, save_safetensors
from paramgen.layout import SINGLE, Layout, ZooRows, collate
from paramgen.normalize import GlobalScale, Normalizer, PerLayerZScore, PerTaskZScore
from paramgen.spec import ParamSpec, SpecMismatchError
from paramgen.vectorize import FamilyVectorizer

__all__ = ["Generator", "NotFittedError", "Encoding"]


class NotFittedError(RuntimeError):
    """A generator was used before it was fitted (`paramgen.training.fit`, `paramgen.fit`) or loaded (`Generator.from_pretrained`)."""


@attrs.frozen(eq=False)
class Encoding:
    """A zoo encoded by `Generator.encode_zoo`, in the zoo's order.

    Attributes:
        codes: ``(M, *latent_shape)`` latents, or ``(M, L)`` token ids of a discrete
            tokenizer; on the generator's device, not standardized.
        latents: The quantized latents of a discrete tokenizer when asked for, else ``None``.
        conds: The items' raw conditions (``None`` when no item has one).
        tasks: The items' tasks (``None`` when no item has one).
    """

    codes: torch.Tensor
    latents: torch.Tensor | None
    conds: list[Any] | None
    tasks: list[str] | None


def _collate(items: Any) -> dict[str, Any]:
    """`paramgen.layout.collate`, keeping the items' ``"position"`` (a positional tokenizer's chunk ids)."""
    batch = collate(items)
    if not isinstance(items, dict):
        positions = [it.get("position") for it in items]
        batch["position"] = None if all(p is None for p in positions) else positions
    return batch


class _Positioned(torch.utils.data.Dataset):
    """A dataset of rows whose batches also carry each model's ``"position"``."""

    def __init__(self, rows: Any, positions: torch.Tensor) -> None:
        self.rows, self.positions = rows, positions
        self.shared = getattr(rows, "shared", None)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]) -> dict[str, Any]:
        return {**self.rows.__getitems__(idx), "position": self.positions[idx]}


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _anchor_sha256(config: Mapping[str, Any]) -> str:
    """SHA-256 of a saved generator's anchor record together with its ``config_sha256``."""
    import hashlib
    import json

    record = {"anchor": config.get("anchor"), "config_sha256": config.get("config_sha256")}
    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()).hexdigest()


def _positive_int(value: Any, name: str) -> int:
    """``value`` if it is an integer >= 1, else a `ValueError` naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


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
        base: A pinned base checkpoint (`paramgen.base.PinnedBase`, or a safetensors path,
            a state dict or a module): the generator learns and samples ``D = w - w_base``
            and `sample` returns ``base + D``. Single architectures only; the base must
            hold every vector tensor of the spec with its shape.
        anchor: A residual anchor (`paramgen.anchors.PrototypeAnchor`, computed from each
            condition's own data, or `paramgen.anchors.NearestTaskAnchor`, the stored
            weights of the zoo task nearest to the condition): the generator learns
            ``w - s * a(cond)`` (`fit` subtracts it: pass the weights) and `sample_flat`
            adds ``s * a(cond)`` back. Single architectures with a conditioner, without a
            pinned base; saved with the generator.

    Attributes:
        base: The `paramgen.base.PinnedBase`, or ``None``.
        anchor: The anchor (`paramgen.anchors.PrototypeAnchor` or
            `paramgen.anchors.NearestTaskAnchor`), or ``None``.
    """

    def __init__(
        self,
        *,
        vectorizer: Vectorizer | FamilyVectorizer,
        tokenizer: Tokenizer,
        prior: Prior,
        conditioner: Conditioner | None = None,
        normalizer: Normalizer | None = None,
        base: Any = None,
        anchor: Anchor | None = None,
    ) -> None:
        layout = Layout(vectorizer, normalizer)  # checks the vectorizer and the normalizer
        pinned = None
        if base is not None:
            if not layout.single:
                raise ValueError("base= pins one base checkpoint for one architecture; a family generator (FamilyVectorizer) takes none")
            pinned = PinnedBase.of(base)
            pinned.check_covers(layout.specs[SINGLE], what="the generator's architecture")
        require(tokenizer, Tokenizer, "tokenizer")
        require(prior, Prior, "prior")
        if conditioner is not None:
            require(conditioner, Conditioner, "conditioner")
        # A prior over tokens (it has a vocabulary) pairs with a discrete tokenizer.
        self.discrete = hasattr(prior, "vocab_size")
        if self.discrete:
            if not hasattr(tokenizer, "decode_indices"):
                raise TypeError(f"a token prior ({type(prior).__name__}) needs a discrete tokenizer with decode_indices, got {type(tokenizer).__name__}")
            vocab, codebook = getattr(prior, "vocab_size"), getattr(tokenizer, "codebook_size", None)  # noqa: B009
            if vocab != codebook:
                raise ValueError(f"prior vocabulary {vocab} does not match the codebook size {codebook}")
            shape = getattr(tokenizer, "tokens_shape", None)
        else:
            shape = getattr(tokenizer, "latent_shape", None)
        prior_shape = getattr(prior, "shape", None)
        if shape is not None and prior_shape is not None and tuple(prior_shape) != tuple(shape):
            raise ValueError(f"prior shape {tuple(prior_shape)} does not match the tokenizer's {'token' if self.discrete else 'latent'} shape {tuple(shape)}")
        rows = getattr(tokenizer, "rows", layout.rows)
        width = getattr(tokenizer, "width", layout.width)
        if (rows, width) != (layout.rows, layout.width):
            raise ValueError(f"tokenizer expects rows of ({rows}, {width}), the vectorizer makes ({layout.rows}, {layout.width})")
        cond_dim = getattr(prior, "cond_dim", None)
        if conditioner is not None and cond_dim is not None and cond_dim != conditioner.dim:
            raise ValueError(f"prior takes conditions of dim {cond_dim}, the conditioner makes {conditioner.dim}")
        if conditioner is None and cond_dim:
            raise ValueError(f"prior is conditional (cond_dim={cond_dim}) but no conditioner was given")
        self.layout = layout
        self.vectorizer = vectorizer
        self.tokenizer = tokenizer
        self.prior = prior
        self.conditioner = conditioner
        self.latent_stats = LatentStats()
        self.fitted = False
        self.base: PinnedBase | None = pinned
        self._base_vector: torch.Tensor | None = None  # (D,) float64, read once
        if anchor is not None:
            if not isinstance(anchor, (PrototypeAnchor, NearestTaskAnchor)):
                raise TypeError(f"anchor= takes a paramgen.anchors.PrototypeAnchor or NearestTaskAnchor, got {type(anchor).__name__}")
            if not layout.single or pinned is not None or conditioner is None:
                raise ValueError("anchor= needs a conditional generator of one architecture without a pinned base (the anchor is computed from each condition)")
            anchor.check_spec(layout.specs[SINGLE])
        self.anchor: Anchor | None = anchor

    # ------------------------------------------------------------------ anchor
    def with_anchor(self, anchor: Anchor | None) -> Generator:
        """A generator of the same components (shared, not copied) with ``anchor``.

        Build a pipeline (e.g. `paramgen.pipelines.d2nwg`), then ``.with_anchor(...)``
        before fitting; a fitted generator keeps its latent statistics and fitted state
        (its prior must have been fitted on the matching residuals).

        Examples:
            >>> import torch
            >>> from paramgen.anchors import PrototypeAnchor
            >>> from paramgen.conditioners.ordered import OrderedSetConditioner
            >>> from paramgen.heads import head_spec
            >>> from paramgen.pipelines import d2nwg
            >>> cond = lambda: OrderedSetConditioner(feature_dim=4, num_classes=3, per_class=4, hidden=8)
            >>> gen = d2nwg(head_spec(4, 3), condition=cond, latent_length=8, hidden_channels=8, base_channels=8)
            >>> gen.with_anchor(PrototypeAnchor(kind="prototype_head")).anchor.kind
            'prototype_head'
        """
        out = type(self)(vectorizer=self.vectorizer, tokenizer=self.tokenizer, prior=self.prior, conditioner=self.conditioner,
                         normalizer=self.normalizer, anchor=anchor)  # fmt: skip
        out.latent_stats, out.fitted = self.latent_stats, self.fitted
        return out

    def residual_targets(self, flat: torch.Tensor, conds: Sequence[Any]) -> torch.Tensor:
        """``w - s * a(cond)``: the vectors an anchored generator is fitted on, ``(M, D)``.

        ``paramgen.fit(gen, flat, conds, ...)`` fits on these by itself (pass the weights);
        `sample_flat` then adds ``s * a(cond)`` back.

        Raises:
            ValueError: The generator has no anchor, or a condition lacks what it needs.
        """
        if self.anchor is None:
            raise ValueError("this generator has no anchor (build it with anchor=paramgen.anchors.PrototypeAnchor(...))")
        return self.anchor.residual(flat, conds, self.spec)

    # ------------------------------------------------------------------ base
    def _base_flat(self, device: torch.device) -> torch.Tensor:
        """``(D,)`` float64 vector of the pinned base, on ``device``."""
        assert self.base is not None
        if self._base_vector is None:
            self._base_vector = self.base.vector(self.spec)
        return self._base_vector.to(device)

    def delta(self, flat: torch.Tensor) -> torch.Tensor:
        """``(M, D)`` weight vectors to deltas over the pinned base, ``w - b`` computed in
        float64 and cast to ``flat``'s dtype (the rows the generator learns).

        Raises:
            ValueError: The generator has no base.
            FloatingPointError: A delta is NaN or Inf.
        """
        if self.base is None:
            raise ValueError("this generator has no pinned base (build it with base=)")
        d = flat.to(torch.float64) - self._base_flat(flat.device)  # (M, D)
        if not torch.isfinite(d).all():
            raise FloatingPointError("weights minus the pinned base hold NaN or Inf: the weights or the base are not finite")
        return d.to(flat.dtype)

    def _add_base(self, flat: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``b + D`` added in float64, cast to ``dtype`` (``flat``'s by default)."""
        w = flat.to(torch.float64) + self._base_flat(flat.device)  # (M, D)
        if not torch.isfinite(w).all():
            raise FloatingPointError("base + sampled delta holds NaN or Inf")
        return w.to(dtype or flat.dtype)

    # ------------------------------------------------------------------ positions
    @property
    def positional(self) -> bool:
        """Whether the tokenizer's decoder is conditioned on chunk positions (``positional = True``)."""
        return getattr(self.tokenizer, "positional", False) is True

    def _positions(self, positions: Any, m: int, what: str) -> torch.Tensor | None:
        """``(m,)`` long positions on the generator's device for a positional tokenizer;
        ``None`` otherwise (positions given to another tokenizer are refused)."""
        if not self.positional:
            if positions is not None:
                raise ValueError(f"positions= is for a positional tokenizer; {type(self.tokenizer).__name__} is not positional: drop positions=")
            return None
        if positions is None:
            raise ValueError(f"the tokenizer {type(self.tokenizer).__name__} is positional: pass positions= (one global chunk id per {what}, {m} here)")
        pos = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        if pos.numel() != m:
            raise ValueError(f"expected one position per {what} ({m}), got {pos.numel()}")
        return pos.to(self.device)

    @property
    def normalizer(self) -> Normalizer | None:
        """The normalizer (held by the `layout`, which applies it)."""
        return self.layout.normalizer

    @property
    def family(self) -> bool:
        """Whether this generator serves a family of architectures (a `FamilyVectorizer`)."""
        return not self.layout.single

    @property
    def components(self) -> dict[str, Any]:
        """Role -> component: ``tokenizer``, ``prior``, and ``conditioner`` and ``normalizer``
        when there are some (what is saved, moved, checkpointed)."""
        parts = {"tokenizer": self.tokenizer, "prior": self.prior, "conditioner": self.conditioner, "normalizer": self.normalizer}
        return {k: v for k, v in parts.items() if v is not None}

    # ------------------------------------------------------------------ devices
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Generator:
        """Move every component to ``device``; cast the components' floating weights to ``dtype``.

        Every component then runs in ``dtype``: the inputs it is given (rows, latents,
        conditions) and the noise it draws are cast to its weights' dtype. A diffusion
        prior runs its sampling chain in float32 at least (float64 for ``float64``), and
        the noise is drawn in float32 and cast, so the same seed samples nearly the same
        weights in every dtype. Sampled state dicts keep the dtypes of the spec, whatever
        ``dtype`` is; normalizer statistics stay in float64 (they are applied in float64).
        Fit in float32 (with ``FitConfig(precision="bf16")`` for mixed precision) and cast
        afterwards: fitting refuses bfloat16 or float16 weights (see `check_fittable`).

        Args:
            device: Where every component goes (``None``: where it is).
            dtype: A floating dtype for the weights (``None``: unchanged).

        Raises:
            TypeError: ``dtype`` is not a floating dtype.

        Examples:
            >>> import torch
            >>> from paramgen.spec import ParamSpec
            >>> from paramgen.vectorize import ModelVectorizer
            >>> from paramgen.tokenizers import IdentityTokenizer
            >>> from paramgen.priors import KDEPrior
            >>> gen = Generator(vectorizer=ModelVectorizer(ParamSpec.from_module(torch.nn.Linear(2, 1))),
            ...                 tokenizer=IdentityTokenizer(rows=1, width=3), prior=KDEPrior())
            >>> gen.to("cpu").device
            device(type='cpu')
        """
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise TypeError(f"Generator.to: dtype must be a floating torch.dtype (e.g. torch.bfloat16), got {dtype!r}")
        for part in (self.vectorizer, *self.components.values()):
            if isinstance(part, nn.Module):
                part.to(device=device, dtype=dtype)
            elif callable(getattr(part, "to", None)):
                # Vectorizers and normalizers take dtype and keep their own (indices, float64
                # statistics); other components (the KDE) cast to it.
                part.to(device, dtype)
        return self

    @property
    def device(self) -> torch.device:
        """The device of the first weight of the prior, tokenizer or conditioner (CPU if none)."""
        for part in (self.prior, self.tokenizer, self.conditioner):
            if isinstance(part, nn.Module):
                for t in (*part.parameters(), *part.buffers()):
                    if t.device.type != "meta":
                        return t.device
            device = getattr(part, "device", None)
            if isinstance(device, torch.device):
                return device
        return torch.device("cpu")

    @property
    def latent_mean(self) -> float:
        return self.latent_stats.mean

    @property
    def latent_scale(self) -> float:
        return self.latent_stats.scale

    @property
    def spec(self) -> ParamSpec:
        """The architecture this generator produces (see `specs` for a family)."""
        if self.family:
            raise AttributeError("this generator serves a family of architectures: use generator.specs[arch]")
        (spec,) = self.layout.specs.values()
        return spec

    @property
    def specs(self) -> dict[str, ParamSpec]:
        """Architecture key -> spec (one entry, ``"model"``, for a single architecture)."""
        return self.layout.specs

    # ------------------------------------------------------------------ data
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
        if has_draws(cond):
            raise TypeError("paramgen.draws.Draws are for fitting (a fresh draw at every step); pass one raw condition per model here")
        c = self.conditioner(cond)
        if c.ndim != 2 or c.shape != (len(cond), self.conditioner.dim):
            raise ValueError(f"conditioner returned shape {tuple(c.shape)}, expected ({len(cond)}, {self.conditioner.dim})")
        return c

    @torch.no_grad()
    def encode_zoo(self, rows: torch.utils.data.Dataset, *, batch_size: int, num_workers: int = 0, latents: bool = False) -> Encoding:
        """Encode every model of ``rows`` once, in order, with the tokenizer in eval mode.

        The one encoder of a zoo: `reconstruct` and the engine's latents stage use it.

        Args:
            rows: A `paramgen.layout.ZooRows` (``Generator.layout.to_rows`` wrapped), or a
                map-style dataset of normalized rows (items as `paramgen.layout.collate`
                takes them, with a ``"position"`` each for a positional tokenizer).
            batch_size: Models encoded at once.
            num_workers: DataLoader workers that read ``rows``.
            latents: Also keep a discrete tokenizer's quantized latents.

        Returns:
            The codes (latents or token ids) on the generator's device, with the items'
            conditions and tasks.
        """
        _positive_int(batch_size, "batch_size")
        if isinstance(self.tokenizer, nn.Module):
            self.tokenizer.eval()
        device = self.device
        loader = torch.utils.data.DataLoader(rows, batch_size=batch_size, collate_fn=_collate, num_workers=num_workers)
        shared = getattr(rows, "shared", None)
        shared = None if shared is None else shared.to(device)  # (N, C), moved once
        codes: list[torch.Tensor] = []
        quantized: list[torch.Tensor] = []
        conds: list[Any] = []
        tasks: list[Any] = []
        for batch in loader:
            kwargs: dict[str, Any] = {}
            if self.positional:
                position = batch.get("position")
                if position is None or (isinstance(position, list) and any(p is None for p in position)):
                    raise ValueError(f"the tokenizer {type(self.tokenizer).__name__} is positional: every item needs a 'position' (its global chunk id)")
                kwargs["position"] = torch.as_tensor(position, dtype=torch.long).to(device)  # (B,)
            out = self.tokenizer.encode(batch["x"].to(device), mask=shared if batch["mask"] is None else batch["mask"].to(device), **kwargs)
            if self.discrete:
                if out.indices is None:
                    raise TypeError(f"the discrete tokenizer {type(self.tokenizer).__name__} returned no token ids from encode")
                codes.append(out.indices)
                if latents:
                    quantized.append(out.latents)
            else:
                codes.append(out.latents)
            conds.extend(batch["cond"] if batch["cond"] is not None else [None] * len(batch["x"]))
            tasks.extend(batch["task"] if batch["task"] is not None else [None] * len(batch["x"]))
        return Encoding(
            codes=torch.cat(codes),
            latents=torch.cat(quantized) if quantized else None,
            conds=None if all(c is None for c in conds) else conds,
            tasks=None if all(t is None for t in tasks) else tasks,
        )

    # ------------------------------------------------------------------ fitting
    def check_fittable(self) -> None:
        """Refuse to fit networks whose weights are in bfloat16 or float16.

        An optimizer step on half-precision weights is lost whenever it is smaller than
        the weight's rounding step (about 0.4% of its size in bfloat16), so fitting such a
        generator would run but learn little. Mixed precision is the way to fit fast:
        weights in float32, ``FitConfig(precision="bf16")`` (autocast), then
        ``generator.to(dtype=torch.bfloat16)`` to sample. float32 and float64 fit.

        Raises:
            TypeError: A component's floating weights are bfloat16 or float16 (the message
                names the components and the remedy).

        Examples:
            >>> import torch
            >>> from paramgen.spec import ParamSpec
            >>> from paramgen.vectorize import ModelVectorizer
            >>> from paramgen.tokenizers import VAETokenizer
            >>> from paramgen.priors import KDEPrior
            >>> tok = VAETokenizer(rows=1, width=3, latent_channels=1, latent_length=4, hidden_channels=8, num_down=1)
            >>> gen = Generator(vectorizer=ModelVectorizer(ParamSpec.from_module(torch.nn.Linear(2, 1))), tokenizer=tok, prior=KDEPrior())
            >>> gen.to(dtype=torch.bfloat16).check_fittable()
            Traceback (most recent call last):
            ...
            TypeError: fit refuses the tokenizer in torch.bfloat16 (steps below its rounding are lost): fit in float32 ...
        """
        half = {torch.bfloat16, torch.float16}
        found = {
            role: dtype
            for role, part in self.components.items()
            if isinstance(part, nn.Module)
            for dtype in {p.dtype for p in part.parameters()} & half
        }
        if found:
            raise TypeError(
                f"fit refuses the {', '.join(f'{r} in {d}' for r, d in found.items())} (steps below its rounding are lost): "
                "fit in float32 (generator.to(dtype=torch.float32)) with FitConfig(precision='bf16') for speed, then cast to sample"
            )

    # ------------------------------------------------------------------ sampling
    def _require_fitted(self) -> None:
        if not self.fitted:
            raise NotFittedError(
                "this generator is not fitted: fit it with paramgen.fit or paramgen.training.fit (a prior trained by gradient steps needs prior_steps > 0) "
                "or load one with Generator.from_pretrained()"
            )

    @torch.no_grad()
    def reconstruct(
        self,
        flat: torch.Tensor | Sequence[torch.Tensor],
        *,
        tasks: Sequence[str] | None = None,
        archs: Sequence[str] | None = None,
        batch_size: int = 256,
        positions: Sequence[int] | torch.Tensor | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Encode and decode weight vectors ``(M, D)``: what the tokenizer alone preserves.

        For a family, ``flat`` is a sequence of vectors with their ``archs``, and so is the result.
        With a pinned base, ``flat`` holds weights: their deltas are encoded, and the
        decoded deltas come back with the base added. ``positions``: one global chunk id
        per vector, for (and only for) a positional tokenizer.
        """
        self._require_fitted()
        if self.anchor is not None:
            raise ValueError("reconstruct encodes weights without their conditions; an anchored generator's codes are residuals over a(cond): encode gen.residual_targets(flat, conds) instead")
        _positive_int(batch_size, "batch_size")
        self._check_tasks_used(tasks)
        arch_list = self.layout.check_archs(archs, len(flat))
        pos = self._positions(positions, len(flat), "vector")
        if self.base is not None:
            self.layout.check_flat(flat, arch_list)
            assert isinstance(flat, torch.Tensor)  # a single architecture
            flat = self.delta(flat)
        rows: torch.utils.data.Dataset = ZooRows(*self.layout.to_rows(flat, tasks, arch_list))
        if pos is not None:
            rows = _Positioned(rows, pos.cpu())
        codes = self.encode_zoo(rows, batch_size=batch_size).codes
        decoded = torch.cat([self._decode(codes[s], None if pos is None else pos[s]) for s in _batches(len(codes), batch_size)])
        out = self.layout.from_rows(decoded, tasks, arch_list)
        if self.base is not None:
            assert isinstance(out, torch.Tensor)
            out = self._add_base(out)
        return out

    def _decode(self, codes: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (token ids for a discrete tokenizer) to rows; ``positions`` go to a positional tokenizer."""
        kwargs: dict[str, Any] = {} if positions is None else {"position": positions}
        if self.discrete:
            decode_indices = getattr(self.tokenizer, "decode_indices")  # noqa: B009  # checked in __init__
            return decode_indices(codes, **kwargs)
        return self.tokenizer.decode(codes, **kwargs)

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
        positions: Sequence[int] | torch.Tensor | None = None,
        deltas: bool = False,
        guidance: Guidance | None = None,
        **sample_kwargs: Any,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Sample ``n`` weight vectors per condition: ``(B * n, D)`` in weight scale.

        For a family, ``archs`` gives the architecture of each condition and the result
        is a list of ``B * n`` flat vectors, each of its architecture.

        Args:
            cond: A sequence of raw conditions (``None`` for an unconditional generator).
            n: Samples per condition.
            generator: Randomness of sampling; a seeded one gives identical samples.
            tasks: Task name per condition, for a per-task normalizer
                (`paramgen.normalize.PerTaskZScore`); not needed when the conditions are
                themselves task names the normalizer has seen (they are then the tasks).
                Refused by a generator whose normalizer uses no tasks.
            archs: For a family: the architecture key of each condition.
            batch_size: Models decoded at once (a positive integer).
            positions: For a positional tokenizer (and only for one): the global chunk id
                of each condition (``B``; each repeated for its ``n`` samples).
            deltas: With a pinned base, return the sampled deltas ``D`` instead of
                ``base + D`` (added in float64, cast to the vector dtype).
            guidance: A `paramgen.guidance.Guidance`: at each DDIM step the predicted
                latents are decoded into weights (with the anchor and the pinned base),
                scored by its loss on each sample's own condition, and moved along the
                negative gradient. Needs a `paramgen.priors.DiffusionPrior` sampled with
                DDIM and one architecture.
            **sample_kwargs: Passed to ``prior.sample``, which acts on each or raises
                naming it (e.g. ``steps=20``: DDIM steps; with ``sampler="ddpm"`` it
                raises). A `paramgen.priors.DiffusionPrior` samples with DDIM, 50 steps,
                by default.

        Raises:
            ValueError: ``n`` or ``batch_size`` is not a positive integer; a per-task
                normalizer lacks the tasks; ``tasks`` or ``archs`` do not match the
                conditions, or are given to a generator that does not use them.
            TypeError: A sampling option the prior does not take (named, with the valid
                ones); ``guidance`` for a prior that is not a diffusion prior.
            NotFittedError: The generator is not fitted.
        """
        self._require_fitted()
        self._check_guidance(guidance)
        _positive_int(n, "n")
        _positive_int(batch_size, "batch_size")
        self._check_tasks_used(tasks)
        c = self.condition(cond)
        if c is not None:
            c = c.to(self.device)
        b = 1 if c is None else c.shape[0]
        tasks = self._tasks_for(cond, tasks, b)
        if tasks is not None and (isinstance(tasks, str) or len(tasks) != b):
            raise ValueError(f"expected tasks= with one task name per condition ({b}), got {tasks!r}"[:300])
        arch_list = self.layout.check_archs(archs, b)
        pos = self._positions(positions, b, "condition")
        if c is not None:
            c = c.repeat_interleave(n, dim=0)  # (B*n, Dc)
        if pos is not None:
            pos = pos.repeat_interleave(n)  # (B*n,)
        if deltas and self.base is None:
            raise ValueError("deltas=True returns the sampled deltas over a pinned base; this generator has none")
        total = b * n
        rows = []
        for s in _batches(total, batch_size):
            if guidance is not None:
                assert cond is not None  # checked in _check_guidance
                sample_kwargs["guidance"] = self._latent_guidance(guidance, [cond[i // n] for i in range(s.start, s.stop)],
                                                                  None if tasks is None else [tasks[i // n] for i in range(s.start, s.stop)],
                                                                  None if pos is None else pos[s])  # fmt: skip
            z = self.prior.sample(s.stop - s.start, None if c is None else c[s], generator=generator, **sample_kwargs)
            if not self.discrete:
                if not torch.isfinite(z).all():
                    raise FloatingPointError("the prior produced NaN or Inf latents")
                z = self.latent_stats.restore(z)
            rows.append(self._decode(z, None if pos is None else pos[s]))
        row_tasks = None if tasks is None else [t for t in tasks for _ in range(n)]
        flat = self.layout.from_rows(torch.cat(rows), row_tasks, [a for a in arch_list for _ in range(n)])
        if not all(torch.isfinite(f).all() for f in flat):
            raise FloatingPointError(
                "generated weights contain NaN or Inf after de-normalization (e.g. exp of a huge "
                "log-normalized running_var): the prior is likely undertrained"
            )
        if self.anchor is not None:
            assert isinstance(flat, torch.Tensor) and cond is not None  # checked in __init__
            a = self.anchor(cond, self.spec).to(device=flat.device, dtype=torch.float64).repeat_interleave(n, dim=0)  # (B*n, D)
            flat = (flat.to(torch.float64) + a).to(flat.dtype)
        if self.base is not None and not deltas:
            assert isinstance(flat, torch.Tensor)
            return self._add_base(flat)
        return flat

    def _check_guidance(self, guidance: Guidance | None) -> None:
        """Refuse loss guidance where it cannot act: not a `Guidance`, a prior without a
        DDIM loop that takes it, a family, an unconditional generator."""
        if guidance is None:
            return
        if not isinstance(guidance, Guidance):
            raise TypeError(f"guidance= takes a paramgen.guidance.Guidance, got {type(guidance).__name__}")
        if self.discrete or "guidance" not in getattr(self.prior, "SAMPLE_OPTIONS", ()):
            raise TypeError(f"guidance= steers the DDIM steps of a diffusion prior (paramgen.priors.DiffusionPrior); this generator's prior is {type(self.prior).__name__}, which takes no guidance")
        if self.family:
            raise ValueError("guidance= needs a generator of one architecture; this one serves a family (FamilyVectorizer)")
        if self.conditioner is None:
            raise ValueError("guidance= computes its loss from each sample's condition; this generator is unconditional")

    def _latent_guidance(self, guidance: Guidance, conds: list[Any], tasks: list[str] | None, positions: torch.Tensor | None) -> LatentGuidance:
        """``guidance`` as a loss on the prior's latents: the decoding of `sample_flat`,
        differentiable, for the samples of ``conds`` (one condition per sample)."""
        anchor = None if self.anchor is None else self.anchor(conds, self.spec)  # (B, D), from the conditions' own data

        def loss(x0: torch.Tensor) -> torch.Tensor:
            rows = self._decode(self.latent_stats.restore(x0), positions)
            flat = self.layout.from_rows(rows, tasks, [SINGLE] * len(conds))
            assert isinstance(flat, torch.Tensor)  # one architecture (checked)
            if anchor is not None:
                flat = flat + anchor.to(device=flat.device, dtype=flat.dtype)
            if self.base is not None:
                flat = flat + self._base_flat(flat.device).to(flat.dtype)
            weights = flat if guidance.inputs == "flat" else self.spec.unflatten_stacked(flat)
            return guidance.loss(weights, conds)

        return LatentGuidance(loss, scale=guidance.scale, max_grad_norm=guidance.max_grad_norm)

    def _check_tasks_used(self, tasks: Sequence[str] | None) -> None:
        """``tasks=`` only selects a per-task normalizer's statistics: refuse them where
        nothing would read them (no normalizer, or a built-in one without per-task
        statistics), rather than ignore them."""
        if tasks is None or not (self.normalizer is None or isinstance(self.normalizer, (PerLayerZScore, GlobalScale))):
            return
        has = "no normalizer" if self.normalizer is None else f"a {type(self.normalizer).__name__} normalizer"
        raise ValueError(f"tasks= selects a per-task normalizer's statistics, but this generator has {has}, which uses no tasks: drop tasks=")

    def _tasks_for(self, cond: Any, tasks: Sequence[str] | None, b: int) -> Sequence[str] | None:
        """The tasks a per-task normalizer needs: ``tasks``, or the conditions when they
        are task names the normalizer has seen."""
        if tasks is not None or not isinstance(self.normalizer, PerTaskZScore):
            return tasks
        known = set(self.normalizer.tasks)
        if isinstance(cond, Sequence) and not isinstance(cond, (str, bytes)) and all(isinstance(c, str) and c in known for c in cond):
            return list(cond)
        raise ValueError(
            f"this generator's PerTaskZScore normalizer needs the task of each condition: pass tasks= "
            f"(one task name per condition, {b} here; known tasks: {sorted(known)[:10]}); "
            "conditions that are themselves known task names are used as the tasks"
        )

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
        """Sample ``n`` state dicts per condition (see `sample_flat` for the arguments).

        Args:
            base: State dict supplying tensors outside the generated selection. A
                generator with a pinned base takes them from it, and refuses ``base=``.

        Returns:
            ``B * n`` state dicts, condition by condition. Each generated tensor owns
            compact storage of its own size (no view into the batch), so saving one
            state dict writes one model; tensors taken from ``base`` are ``base``'s. With
            a pinned base: ``base + D``, added in float64 and cast once to the spec's dtypes.

        Raises:
            ValueError: ``base=`` given to a generator with a pinned base.
        """
        if self.base is not None and base is not None:
            raise ValueError("this generator has a pinned base: the tensors it does not generate come from it; drop base=")
        flat = self.sample_flat(cond, n, generator=generator, tasks=tasks, archs=archs, batch_size=batch_size, deltas=self.base is not None, **sample_kwargs)
        keys = self.layout.check_archs(archs, len(flat) // n)
        if self.base is not None:
            assert isinstance(flat, torch.Tensor)
            flat = self._add_base(flat, torch.float64)  # cast once, to each tensor's dtype, by unflatten
            pinned = self.base
            base = {t.name: pinned.tensor(t.name) for t in self.spec.tensors if t.role == "frozen" and t.tied_to is None and t.name in pinned.tensors}
        return self.layout.unflatten(flat, [a for a in keys for _ in range(n)], base=base)

    def sample_into(
        self, model: nn.Module, cond: Sequence[Any] | None = None, *, generator: torch.Generator | None = None, arch: str | None = None, **kwargs: Any
    ) -> nn.Module:
        """Sample one set of weights and load it into ``model`` (which must match the spec,
        or, for a family, the spec of ``arch``)."""
        if self.family and arch is None:
            raise ValueError(f"this generator serves a family: pass arch= (one of {sorted(self.specs)})")
        if not self.family and arch is not None:
            raise ValueError(f"arch={arch!r} picks a member of a family generator; this one has a single architecture: drop arch=")
        (key,) = self.layout.check_archs(None if arch is None else [arch], 1)
        spec = self.specs[key]
        if arch is not None:
            kwargs["archs"] = [arch]
        mine = {t.name: (t.shape, t.dtype) for t in spec.tensors}
        theirs = {t.name: (t.shape, t.dtype) for t in ParamSpec.from_module(model).tensors}
        if mine != theirs:
            diff = sorted(set(mine.items()) ^ set(theirs.items()))[:3]
            raise SpecMismatchError(f"model does not match the generator's architecture; differing tensors {diff}")
        sd = self.sample(cond, 1, generator=generator, base=None if self.base is not None else model.state_dict(), **kwargs)[0]
        model.load_state_dict(sd, strict=True)
        return model

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``weights.safetensors`` (each atomically; config last).

        ``config.json`` records two SHA-256 digests that `from_pretrained` checks: of the
        weights file (``weights_sha256``) and of what defines the generator
        (``config_sha256``: spec, vectorizer, components, latent statistics and the
        pinned base's record, ``base``, when there is one).
        """
        self._require_fitted()
        anchor = self.anchor

        def add_anchor(config: dict[str, Any], folder: Path) -> None:
            # The anchor is part of what the samples are: recorded beside the components,
            # with a digest tied to config_sha256 so that an edit of either is refused.
            assert anchor is not None
            config["anchor"] = anchor.config()
            if isinstance(anchor, NearestTaskAnchor):  # its keys and weights, with their digest in the record
                save_safetensors(folder / "anchor.safetensors", anchor.tensors(), metadata={"format": "paramgen-anchor"})
                config["anchor"]["tensors_sha256"] = file_sha256(folder / "anchor.safetensors")
            config["anchor_sha256"] = _anchor_sha256(config)

        return pretrained.save_pretrained(self, path, finish=None if anchor is None else add_anchor)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, *, spec: ParamSpec | None = None, device: torch.device | str | None = None, base: Any = None
    ) -> Generator:
        """Rebuild a generator saved by `save_pretrained`, from registered components only.

        Loading is strict: the weights file must match the SHA-256 digest recorded in
        ``config.json``, and what defines the generator (spec, vectorizer, components,
        latent statistics) must match the digest of the config as it was saved, so a
        hand-edited ``config.json`` (e.g. the prior's ``timesteps``) is refused rather than
        loaded into another generator (folders saved before either digest existed load
        with a warning). Every tensor group in the weights needs its component entry (a
        normalizer's statistics without their ``normalizer`` entry would sample at the
        wrong scale), and every component's weights must be complete and of the shapes
        its config builds (the error names the first differing tensors and counts them).

        Args:
            path: The folder.
            spec: If given, the architecture the caller expects; a generator saved for
                another architecture raises `paramgen.spec.SpecMismatchError`.
            device: Where to put it (default: the CPU, wherever it was saved).
            base: The pinned base the generator was saved with (a
                `paramgen.base.PinnedBase`, or a safetensors path, state dict or module):
                required when ``config.json`` records one, and checked against the record;
                refused when it records none.

        Raises:
            FileNotFoundError: ``config.json`` or ``weights.safetensors`` is missing.
            paramgen.registry.UnregisteredComponentError: the config names a component that
                is not registered (nothing named by the file is imported).
            ValueError: not a paramgen generator, an unknown format version, a missing
                key (named, with the file), invalid latent statistics, a config edited after
                saving, weights that do not match their digest, their entries or the
                components their config builds.
            paramgen.base.BaseMismatchError: The recorded base is missing or another one
                (named by digest or tensor), or a base is given to a generator saved without.
        """
        gen: Generator = pretrained.from_pretrained(cls, path, spec=spec, device=device, base=base)
        config = read_json(Path(path) / "config.json")
        if "anchor" in config or "anchor_sha256" in config:
            if config.get("anchor_sha256") != _anchor_sha256(config):
                raise ValueError(f"{Path(path) / 'config.json'}: the anchor record was edited after saving (anchor_sha256 does not match); restore it")
            record = config["anchor"]
            tensors = None
            if isinstance(record, Mapping) and "tensors_sha256" in record:
                tensor_path = Path(path) / "anchor.safetensors"
                if not tensor_path.exists() or file_sha256(tensor_path) != record["tensors_sha256"]:
                    raise ValueError(f"{tensor_path}: missing, or not the file saved with this generator (tensors_sha256 does not match)")
                from safetensors.torch import load_file

                tensors = load_file(str(tensor_path))
            return gen.with_anchor(anchor_from_config({k: v for k, v in record.items() if k != "tensors_sha256"}, tensors))
        return gen
