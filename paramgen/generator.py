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
rebuilds it from registered components only (`paramgen.registry`): loading never imports
a class that a file names.

The generator holds no training loop: `paramgen.training.fit` fits it (`Generator.fit`
is a shortcut). Devices work the PyTorch way: `Generator.to` moves every component, and
each component makes its tensors on the device of its inputs or parameters.

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

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from safetensors.torch import load_file
from torch import nn

from paramgen.interfaces import Conditioner, LatentStats, Prior, Tokenizer, Vectorizer
from paramgen.io import file_sha256, read_json, save_safetensors, write_json
from paramgen.normalize import GlobalScale, Normalizer, PerLayerZScore, PerTaskZScore, normalizer_from_config
from paramgen.registry import UnregisteredComponentError, registry
from paramgen.spec import ParamSpec, SpecMismatchError
from paramgen.tracking import Logger
from paramgen.vectorize import FamilyVectorizer, vectorizer_from_config

__all__ = ["Generator", "NotFittedError"]

logger = logging.getLogger(__name__)

FORMAT = "paramgen.Generator"
# 2: components saved by registered name and latent statistics as one record.
# 1: components saved as "module:qualname" (loaded when the path is a registered class).
FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_ROLES = ("tokenizer", "prior", "conditioner", "normalizer")


class NotFittedError(RuntimeError):
    """A generator was used before `Generator.fit` or `Generator.from_pretrained`."""


class _WeightsMismatch(Exception):
    """Saved weights that do not fit the rebuilt component (internal, reported as ValueError)."""


def _check_definition(config: Mapping[str, Any], config_path: Path, names: Mapping[str, str], stats: LatentStats) -> None:
    """Refuse a ``config.json`` whose definition no longer matches its ``config_sha256``."""
    digest = config.get("config_sha256")
    if digest is None:
        logger.warning("%s records no config digest (saved by an older paramgen): edits to it cannot be detected", config_path)
        return
    if not isinstance(digest, str) or digest != _definition_sha256(config, names, stats):
        raise ValueError(
            f"{config_path} was edited after saving: its spec, vectorizer, components or latent statistics no longer match "
            "the digest recorded when it was saved (config_sha256). The weights belong to the saved configuration: "
            "restore it, or build the generator you want and fit it"
        )


def _require(obj: Any, protocol: type, role: str) -> None:
    if not isinstance(obj, protocol):
        verbs = sorted(n for n in vars(protocol) if not n.startswith("_")) + sorted(getattr(protocol, "__annotations__", {}))
        raise TypeError(f"{role} must implement the {protocol.__name__} protocol ({', '.join(verbs)}), got {type(obj).__name__}")


def _by_arch(archs: Sequence[str]) -> dict[str, list[int]]:
    """Row indices of each architecture, in order of first appearance."""
    rows: dict[str, list[int]] = {}
    for i, a in enumerate(archs):
        rows.setdefault(a, []).append(i)
    return rows


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _need(config: Mapping[str, Any], key: str, where: str) -> Any:
    """``config[key]``, or a `ValueError` naming the key and the file."""
    if not isinstance(config, Mapping) or key not in config:
        raise ValueError(f"{where} lacks the key {key!r}")
    return config[key]


def _definition_sha256(config: Mapping[str, Any], names: Mapping[str, str], stats: LatentStats) -> str:
    """SHA-256 of the canonical JSON of what defines a saved generator: its spec, spec id,
    vectorizer, components (registered names and configs) and latent statistics.

    It is computed from a parsed ``config.json`` after the component names are resolved and
    the latent statistics read, so it does not depend on the file's layout: a format-1
    folder (class paths, separate latent mean and scale) of the same generator has the
    same digest, and so does a re-indented file.
    """
    definition = {
        "spec": config.get("spec"),
        "spec_id": config.get("spec_id"),
        "vectorizer": config.get("vectorizer"),
        "components": {
            role: ({} if role == "normalizer" else {"name": names[role]}) | {"config": entry["config"]}
            for role, entry in config["components"].items()
        },
        "latent_stats": attrs.asdict(stats),
    }
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


#: Tensors a weights-mismatch error lists before it only counts the rest.
_SHOWN_TENSORS = 3


def _weights_mismatch(part: nn.Module, saved: Mapping[str, torch.Tensor]) -> str | None:
    """A short account of how ``saved`` tensors do not fit ``part`` (``None`` if they fit):
    the first differing tensors with their saved and built shapes, and a count, instead of
    ``load_state_dict``'s dump of every one."""
    built = {k: tuple(v.shape) for k, v in part.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in saved.items()}
    names = [*built, *(k for k in have if k not in built)]  # the module's order, then extra saved tensors
    diffs = [f"{k[:100]} saved {have.get(k, 'missing')} vs built {built.get(k, 'absent')}".replace("'", "") for k in names if have.get(k) != built.get(k)]
    if not diffs:
        return None
    more = f"; and {len(diffs) - _SHOWN_TENSORS} more" if len(diffs) > _SHOWN_TENSORS else ""
    return f"{len(diffs)} of {len(names)} tensors differ ({'; '.join(diffs[:_SHOWN_TENSORS])}{more})"


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
            if prior.vocab_size != tokenizer.codebook_size:  # type: ignore[attr-defined]  # checked with hasattr above
                raise ValueError(f"prior vocabulary {prior.vocab_size} does not match the codebook size {tokenizer.codebook_size}")  # type: ignore[attr-defined]
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
        self.latent_stats = LatentStats()
        self.fitted = False

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
        for part in (self.vectorizer, *self._components().values()):
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

    def _normalize(self, flat: torch.Tensor, spec: ParamSpec, tasks: Sequence[str] | None, *, inverse: bool = False) -> torch.Tensor:
        """The normalizer's transform (or inverse) of ``(M, D)`` vectors of ``spec``: the one
        place both a single architecture and a family's members are normalized. A
        `GlobalScale` gets the spec (its log and fan-in options need it), the others the tasks."""
        if self.normalizer is None:
            return flat
        if isinstance(self.normalizer, GlobalScale):
            return self.normalizer.inverse(flat, spec=spec) if inverse else self.normalizer.transform(flat, spec=spec)
        return self.normalizer.inverse(flat, tasks=tasks) if inverse else self.normalizer.transform(flat, tasks=tasks)

    def _rows(self, flat: torch.Tensor | Sequence[torch.Tensor], tasks: Sequence[str] | None, archs: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized rows ``(M, N, C)`` and their mask (``(N, C)``, or ``(M, N, C)`` for a family)."""
        if archs is None:
            self._check_flat(flat)  # type: ignore[arg-type]
            x = self._normalize(flat.float(), self.spec, tasks)  # type: ignore[union-attr]
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
            fa = self._normalize(torch.stack([flat[i].reshape(-1).float() for i in idx]), spec, None if tasks is None else [tasks[i] for i in idx])
            x[idx] = fam.pack(fa, a)
            mask[idx] = fam.mask_of(a)
        return x, mask

    def _flat(self, rows: torch.Tensor, tasks: Sequence[str] | None, archs: list[str] | None = None) -> torch.Tensor | list[torch.Tensor]:
        """Decoded rows (in the tokenizer's dtype) to flat vectors in weight scale, in the
        vector dtype of the specs (float32, or float64 when a spec holds float64 tensors):
        a tokenizer in bfloat16 must not round the de-normalized weights to bfloat16."""
        rows = rows.to(torch.float64 if any(s.vector_dtype == torch.float64 for s in self.specs.values()) else torch.float32)
        if archs is None:
            return self._normalize(self.vectorizer.unpack(rows), self.spec, tasks, inverse=True)  # type: ignore[call-arg]
        out: list[torch.Tensor] = [None] * len(archs)  # type: ignore[list-item]
        for a, idx in _by_arch(archs).items():
            fa = self.vectorizer.unpack(rows[idx], a)  # type: ignore[call-arg]
            fa = self._normalize(fa, self.specs[a], None if tasks is None else [tasks[i] for i in idx], inverse=True)
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
        device = self.device
        shared = mask.to(device) if mask.ndim == 2 else None
        with torch.no_grad():
            outs = [
                self.tokenizer.encode(x[s].to(device), mask=shared if shared is not None else mask[s].to(device))
                for s in _batches(len(x), batch_size)
            ]
        return torch.cat([o.indices if indices else o.latents for o in outs])  # type: ignore[misc]

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
            for role, part in self._components().items()
            if isinstance(part, nn.Module)
            for dtype in {p.dtype for p in part.parameters()} & half
        }
        if found:
            raise TypeError(
                f"fit refuses the {', '.join(f'{r} in {d}' for r, d in found.items())} (steps below its rounding are lost): "
                "fit in float32 (generator.to(dtype=torch.float32)) with FitConfig(precision='bf16') for speed, then cast to sample"
            )

    def fit(
        self,
        flat: Any,
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
        **config: Any,
    ) -> Generator:
        """Fit every stage on a zoo: a shortcut for `paramgen.training.fit`.

        The keywords (and any other `paramgen.training.FitConfig` field in ``config``)
        make the `FitConfig`; ``generator`` seeds it (``FitConfig.seed`` is drawn from it,
        or from torch's global generator when it is ``None``).

        Args:
            flat: The zoo: a `paramgen.zoo.Zoo` (its tasks are used when ``tasks`` is not
                given; a family takes its architectures from the zoo's specs), a
                `paramgen.zoo.WeightDataset`, a sequence of state dicts (each checked
                against the spec), ``(M, D)`` weight vectors in spec order, for a family a
                sequence of ``M`` flat vectors of their own architectures, or a dataset
                (see `paramgen.training.fit`).
            conds: One raw condition per model, for the conditioner.
            tasks: Task name per model (for a per-task normalizer and contrastive groups).
            archs: For a family: the architecture key of each model (inferred from a zoo
                or from state dicts when not given).
            predictor: Frozen accuracy predictor for the predictor-guided VAE loss.
            generator: Seeds all randomness of fitting.
            tracker: Receives losses every ``log_every`` steps.
        """
        from paramgen.training import FitConfig, fit

        self.check_fittable()
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        cfg = FitConfig(
            tokenizer_steps=tokenizer_steps, align_steps=align_steps, prior_steps=prior_steps, batch_size=batch_size,
            tokenizer_lr=tokenizer_lr, prior_lr=prior_lr, weight_decay=weight_decay, seed=seed, progress=progress,
            log_every=log_every, **config,
        )
        return fit(self, flat, conds, config=cfg, tasks=tasks, archs=archs, predictor=predictor, tracker=tracker)

    # ------------------------------------------------------------------ sampling
    def _require_fitted(self) -> None:
        if not self.fitted:
            raise NotFittedError(
                "this generator is not fitted: call fit() (a prior trained by gradient steps needs prior_steps > 0) "
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
    ) -> torch.Tensor | list[torch.Tensor]:
        """Encode and decode weight vectors ``(M, D)``: what the tokenizer alone preserves.

        For a family, ``flat`` is a sequence of vectors with their ``archs``, and so is the result.
        """
        self._require_fitted()
        _positive_int(batch_size, "batch_size")
        self._check_tasks_used(tasks)
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
            tasks: Task name per condition, for a per-task normalizer
                (`paramgen.normalize.PerTaskZScore`); not needed when the conditions are
                themselves task names the normalizer has seen (they are then the tasks).
                Refused by a generator whose normalizer uses no tasks.
            archs: For a family: the architecture key of each condition.
            batch_size: Models decoded at once (a positive integer).
            **sample_kwargs: Passed to ``prior.sample``, which acts on each or raises
                naming it (e.g. ``steps=20``: DDIM steps; with ``sampler="ddpm"`` it
                raises). A `paramgen.priors.DiffusionPrior` samples with DDIM, 50 steps,
                by default.

        Raises:
            ValueError: ``n`` or ``batch_size`` is not a positive integer; a per-task
                normalizer lacks the tasks; ``tasks`` or ``archs`` do not match the
                conditions, or are given to a generator that does not use them.
            TypeError: A sampling option the prior does not take (named, with the valid ones).
            NotFittedError: The generator is not fitted.
        """
        self._require_fitted()
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
            rows.append(self.tokenizer.decode(self.latent_stats.restore(z)))
        row_tasks = None if tasks is None else [t for t in tasks for _ in range(n)]
        row_archs = None if arch_list is None else [a for a in arch_list for _ in range(n)]
        flat = self._flat(torch.cat(rows), row_tasks, row_archs)
        if not all(torch.isfinite(f).all() for f in flat):
            raise FloatingPointError(
                "generated weights contain NaN or Inf after de-normalization (e.g. exp of a huge "
                "log-normalized running_var): the prior is likely undertrained"
            )
        return flat

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
            base: State dict supplying tensors outside the generated selection.

        Returns:
            ``B * n`` state dicts, condition by condition. Each generated tensor owns
            compact storage of its own size (no view into the batch), so saving one
            state dict writes one model; tensors taken from ``base`` are ``base``'s.
        """
        flat = self.sample_flat(cond, n, generator=generator, tasks=tasks, archs=archs, batch_size=batch_size, **sample_kwargs)
        if not self.family:
            return self.spec.unflatten(flat, base=base)  # type: ignore[arg-type]
        row_archs = [a for a in archs for _ in range(n)]  # type: ignore[union-attr]
        return [self.specs[a].unflatten(f[None], base=base)[0] for a, f in zip(row_archs, flat, strict=True)]

    def sample_into(
        self, model: nn.Module, cond: Sequence[Any] | None = None, *, generator: torch.Generator | None = None, arch: str | None = None, **kwargs: Any
    ) -> nn.Module:
        """Sample one set of weights and load it into ``model`` (which must match the spec,
        or, for a family, the spec of ``arch``)."""
        if self.family and arch is None:
            raise ValueError(f"this generator serves a family: pass arch= (one of {sorted(self.specs)})")
        if not self.family and arch is not None:
            raise ValueError(f"arch={arch!r} picks a member of a family generator; this one has a single architecture: drop arch=")
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
        """Write ``config.json`` and ``weights.safetensors`` (each atomically; config last).

        ``config.json`` records two SHA-256 digests that `from_pretrained` checks: of the
        weights file (``weights_sha256``) and of what defines the generator
        (``config_sha256``: spec, vectorizer, components and latent statistics).
        """
        self._require_fitted()
        path = Path(path)
        config: dict[str, Any] = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "spec": None if self.family else self.spec.to_dict(),
            "spec_id": None if self.family else self.spec.fingerprint,
            "vectorizer": self.vectorizer.config(),  # type: ignore[union-attr]
            "latent_stats": attrs.asdict(self.latent_stats),
            "components": {},
        }
        tensors: dict[str, torch.Tensor] = {}
        for role, part in self._components().items():
            entry: dict[str, Any] = {"config": part.config()}
            if role != "normalizer":  # normalizers are rebuilt from their own "type" entry
                entry = {"name": registry.name_of(part), **entry}
            config["components"][role] = entry
            for key, value in part.state_dict().items():
                tensors[f"{role}.{key}"] = value.detach().cpu()
        # What loading rebuilds, as the file will hold it (JSON turns tuples into lists): a
        # config edited after saving (timesteps, widths) is refused instead of silently
        # loading into another generator.
        written = json.loads(json.dumps(config, allow_nan=False))
        names = {role: entry["name"] for role, entry in written["components"].items() if role != "normalizer"}
        config["config_sha256"] = _definition_sha256(written, names, self.latent_stats)
        save_safetensors(path / "weights.safetensors", tensors, metadata={"format": FORMAT})
        # safetensors has no checksum: the digest lets loading refuse corrupted bytes.
        config["weights_sha256"] = file_sha256(path / "weights.safetensors")
        write_json(path / "config.json", config)
        return path

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, *, spec: ParamSpec | None = None, device: torch.device | str | None = None
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

        Raises:
            FileNotFoundError: ``config.json`` or ``weights.safetensors`` is missing.
            paramgen.registry.UnregisteredComponentError: the config names a component that
                is not registered (nothing named by the file is imported).
            ValueError: not a paramgen generator, an unknown format version, a missing
                key (named, with the file), invalid latent statistics, a config edited after
                saving, weights that do not match their digest, their entries or the
                components their config builds.
        """
        path = Path(path)
        config_path, weights_path = path / "config.json", path / "weights.safetensors"
        if not config_path.exists():
            raise FileNotFoundError(f"{path} holds no saved generator (no config.json)")
        config = read_json(config_path)
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise ValueError(f"{config_path} is not a paramgen generator (format {config.get('format') if isinstance(config, dict) else None!r})")
        version = config.get("version")
        if isinstance(version, bool) or version not in _READABLE_VERSIONS:
            raise ValueError(f"{config_path} has format version {version!r}; this paramgen reads versions {_READABLE_VERSIONS}")
        for key in ("vectorizer", "components", "spec"):
            _need(config, key, str(config_path))
        if not isinstance(config["components"], dict) or not isinstance(config["vectorizer"], dict):
            raise ValueError(f"{config_path}: 'components' and 'vectorizer' must be JSON objects")
        if not weights_path.exists():
            raise FileNotFoundError(f"{path} has a config.json but no weights.safetensors")
        digest = config.get("weights_sha256")
        if digest is None:
            logger.warning("%s records no weights digest (saved by an older paramgen): its weights cannot be checked for corruption", config_path)
        elif not isinstance(digest, str) or file_sha256(weights_path) != digest:
            raise ValueError(
                f"{weights_path} does not match the SHA-256 digest recorded in config.json (weights_sha256): "
                "the file is corrupted or was replaced; save the generator again"
            )
        try:
            return cls._build_saved(path, config, version, spec, device)
        except UnregisteredComponentError:  # a KeyError that already names the file
            raise
        except KeyError as e:
            # Nested configs (spec, vectorizer, components) index their keys directly.
            raise ValueError(f"{config_path} lacks the key {e.args[0]!r} (a malformed or truncated config)") from e

    @classmethod
    def _build_saved(cls, path: Path, config: dict[str, Any], version: int, spec: ParamSpec | None, device: torch.device | str | None) -> Generator:
        config_path = path / "config.json"
        family = config["vectorizer"].get("type") == "family"
        try:
            saved_spec = None if family else ParamSpec.from_dict(config["spec"])
            vectorizer: Any = FamilyVectorizer.from_config(config["vectorizer"]) if family else vectorizer_from_config(config["vectorizer"], saved_spec)  # type: ignore[arg-type]
        except (TypeError, ValueError) as e:
            raise ValueError(f"{config_path}: invalid 'spec' or 'vectorizer' entry: {e}") from e
        if spec is not None and family:
            if not any(spec.fingerprint == s.fingerprint for s in vectorizer.specs.values()):
                raise SpecMismatchError(f"the family generator in {path} has no member of the expected architecture (it has {sorted(vectorizer.specs)})")
        elif spec is not None:
            try:
                spec.check_compatible(saved_spec)  # type: ignore[arg-type]
            except SpecMismatchError as e:
                raise SpecMismatchError(f"the generator in {path} was saved for another architecture: {e}") from e
        # Resolve every component name before reading any weights or building anything.
        names: dict[str, str] = {}
        for role, entry in config["components"].items():
            if role not in _ROLES:
                raise ValueError(f"{config_path}: unknown component role {role!r}; expected some of {_ROLES}")
            if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
                raise ValueError(f"{config_path}: the {role} entry must be an object with a 'config' object")
            if role == "normalizer":
                continue
            try:
                names[role] = entry["name"] if version >= 2 else registry.name_for_path(entry["class"])
            except UnregisteredComponentError as e:  # before KeyError, its base class
                raise UnregisteredComponentError(f"{config_path}, {role}: {e}") from None
            except KeyError as e:
                raise ValueError(f"{config_path}: the {role} entry names no component ({'name' if version >= 2 else 'class'} missing)") from e
            try:
                registry.get(names[role])
            except UnregisteredComponentError as e:
                raise UnregisteredComponentError(f"{config_path}, {role}: {e}") from None
        for role in ("tokenizer", "prior"):
            if role not in config["components"]:
                raise ValueError(f"{config_path}: 'components' lacks the {role!r} entry")
        keys = ("latent_stats",) if version >= 2 else ("latent_mean", "latent_scale")
        if missing := [k for k in keys if k not in config]:
            raise ValueError(f"{config_path}: invalid latent statistics: it lacks the key {missing[0]!r}")
        stats: Any = config["latent_stats"] if version >= 2 else {"mean": config["latent_mean"], "scale": config["latent_scale"]}
        try:
            latent_stats = LatentStats(**stats)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{config_path}: invalid latent statistics {stats!r} ({e})") from e
        state = load_file(str(path / "weights.safetensors"))
        # Every group of tensors needs its entry: e.g. normalizer statistics without a
        # normalizer entry would load a generator that samples at the wrong scale.
        orphans = sorted({k.partition(".")[0] for k in state} - set(config["components"]))
        if orphans:
            raise ValueError(
                f"{path}/weights.safetensors holds {', '.join(orphans)} tensors but {config_path} has no entry for "
                f"{'it' if len(orphans) == 1 else 'them'} under 'components'"
            )
        _check_definition(config, config_path, names, latent_stats)
        parts: dict[str, Any] = {}
        for role, entry in config["components"].items():
            sub = {k.removeprefix(f"{role}."): v for k, v in state.items() if k.startswith(f"{role}.")}
            try:
                if role == "normalizer":
                    if not sub:
                        raise ValueError("its statistics are missing from weights.safetensors")
                    parts[role] = normalizer_from_config(entry["config"], sub, spec=saved_spec)
                    continue
                part = registry.build(names[role], entry["config"])
                if isinstance(part, nn.Module):
                    if (mismatch := _weights_mismatch(part, sub)) is not None:
                        raise _WeightsMismatch(mismatch)
                    part.load_state_dict(sub, strict=True)
                    part.eval()
                else:
                    part.load_state_dict(sub)
            except KeyError as e:
                raise ValueError(f"{config_path}: the {role} config lacks the key {e.args[0]!r}") from e
            except _WeightsMismatch as e:
                raise ValueError(
                    f"{path}: the {role}'s saved weights do not fit the {role} its entry in config.json builds: {e}. "
                    "The config was edited after saving, or the weights belong to another generator"
                ) from None
            except (RuntimeError, ValueError, TypeError) as e:
                raise ValueError(f"{path}: the {role} cannot be rebuilt from its entry in config.json and its weights: {e}") from e
            parts[role] = part
        gen = cls(vectorizer=vectorizer, **parts)
        gen.latent_stats = latent_stats
        gen.fitted = True
        if device is not None:
            gen.to(device)
        return gen
