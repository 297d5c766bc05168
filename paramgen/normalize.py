"""Invertible normalizers for flat weight vectors ``(B, D)`` in spec order.

Generative models of weights learn far better on standardized inputs (Cond P-Diff,
table 4a). Three normalizers, all with ``fit`` / ``transform`` / ``inverse`` and statistics
that travel with the generator through ``state_dict`` (tensors, for safetensors) and
``config`` (JSON):

- `PerTaskZScore`: one mean and std per task (Cond P-Diff).
- `PerLayerZScore`: one mean and std per tensor of the spec, optionally after a
  log transform of positive tensors such as BatchNorm ``running_var``.
- `GlobalScale`: one scale for everything.

Statistics are computed and applied in float64, so ``inverse(transform(x))`` matches
``x`` to float32 rounding.

Devices: statistics are fitted on the device of the data, and ``transform`` / ``inverse``
return tensors on the device of their input, moving the statistics (and index tensors)
there when they live elsewhere. ``to(device)`` moves them once, so that no copy is made per
call; statistics stay float64 whatever ``dtype`` is passed.

Examples:
    >>> import torch
    >>> x = torch.randn(6, 10) * 3 + 1
    >>> norm = PerTaskZScore().fit(x, tasks=["a", "a", "a", "b", "b", "b"])
    >>> z = norm.transform(x, tasks=["a", "a", "a", "b", "b", "b"])
    >>> torch.allclose(norm.inverse(z, tasks=["a"] * 3 + ["b"] * 3), x, atol=1e-5)
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from paramgen.spec import NonFiniteWeightsError, ParamSpec, SpecMismatchError, _matches

__all__ = [
    "Normalizer",
    "PerTaskZScore",
    "PerLayerZScore",
    "GlobalScale",
    "normalizer_from_config",
]

_EPS = 1e-12


@runtime_checkable
class Normalizer(Protocol):
    """An invertible map on ``(B, D)`` flat weight vectors, fitted on a zoo."""

    def fit(self, flat: torch.Tensor, *, tasks: Sequence[str] | None = None) -> Normalizer: ...

    def transform(self, flat: torch.Tensor, *, tasks: Sequence[str] | None = None) -> torch.Tensor: ...

    def inverse(self, flat: torch.Tensor, *, tasks: Sequence[str] | None = None) -> torch.Tensor: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None: ...

    def config(self) -> dict[str, Any]: ...


def _check_input(flat: torch.Tensor, dim: int | None = None) -> None:
    if flat.ndim != 2:
        raise ValueError(f"expected flat weight vectors of shape (B, D), got {tuple(flat.shape)}")
    if dim is not None and flat.shape[1] != dim:
        raise SpecMismatchError(f"expected vectors of length {dim} (as fitted), got {flat.shape[1]}")
    if not flat.is_floating_point():
        raise TypeError(f"expected floating vectors, got {flat.dtype}")
    if not torch.isfinite(flat).all():
        raise NonFiniteWeightsError("weight vectors contain NaN or Inf")


def _std(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    std = (x - mean).pow(2).mean().sqrt()
    return torch.where(std > _EPS, std, torch.ones_like(std))  # constant data: scale 1


def _on(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t if t.device == device else t.to(device)


class _Fitted:
    _fitted: bool = False
    _stats: tuple[str, ...] = ()  # tensor attributes that `to` moves

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Any:
        """Move the statistics to ``device``; returns ``self``.

        ``dtype`` is accepted for symmetry with ``nn.Module.to`` and ignored: statistics
        stay float64, and outputs take the dtype of the input.
        """
        if device is not None:
            for name in self._stats:
                setattr(self, name, getattr(self, name).to(device))
        return self

    def _require_fit(self) -> None:
        if not self._fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() first or load_state_dict()")


class PerTaskZScore(_Fitted):
    """Z-score each model with the mean and std of all weights of its task.

    Args:
        unknown: What to do with a task not seen in ``fit`` (e.g. a held-out task at
            generation time): ``"error"`` raises, ``"global"`` uses the statistics of
            the whole zoo.

    Every call takes ``tasks=``, one task name per row. A `paramgen.Generator` whose
    conditions are the task names themselves (strings seen in ``fit``) passes them as the
    tasks, so ``generator.sample(["a", "b"])`` needs no ``tasks=``.
    """

    _stats = ("mean", "std")

    def __init__(self, *, unknown: Literal["error", "global"] = "error") -> None:
        if unknown not in ("error", "global"):
            raise ValueError(f"unknown must be 'error' or 'global', got {unknown!r}")
        self.unknown = unknown
        self.tasks: tuple[str, ...] = ()
        self.mean = torch.zeros(0, dtype=torch.float64)
        self.std = torch.ones(0, dtype=torch.float64)
        self.dim: int | None = None

    def fit(self, flat: torch.Tensor, *, tasks: Sequence[str] | None = None) -> PerTaskZScore:
        _check_input(flat)
        if tasks is None or len(tasks) != flat.shape[0]:
            raise ValueError(f"PerTaskZScore needs one task name per row: {flat.shape[0]} rows, got {None if tasks is None else len(tasks)} names")
        names = sorted(set(tasks))
        x = flat.double()
        means, stds = [], []
        for name in names + ["__global__"]:
            rows = x if name == "__global__" else x[torch.tensor([i for i, t in enumerate(tasks) if t == name], device=x.device)]
            m = rows.mean()
            means.append(m)
            stds.append(_std(rows, m))
        self.tasks = tuple(names)
        self.mean, self.std = torch.stack(means), torch.stack(stds)  # (T+1,), last = global
        self.dim = flat.shape[1]
        self._fitted = True
        return self

    def _rows(self, tasks: Sequence[str] | None, batch: int, device: torch.device) -> torch.Tensor:
        self._require_fit()
        if tasks is None:
            raise ValueError(
                f"PerTaskZScore needs the task of each row: pass tasks= (one task name per row, {batch} here; "
                f"known tasks: {list(self.tasks)[:10]})"
            )
        if isinstance(tasks, str) or len(tasks) != batch:
            raise ValueError(f"PerTaskZScore expected tasks= with one task name per row ({batch}), got {tasks!r}"[:300])
        index = {t: i for i, t in enumerate(self.tasks)}
        unknown = sorted({t for t in tasks if t not in index})
        if unknown and self.unknown == "error":
            raise KeyError(f"tasks {unknown[:5]} were not seen in fit; known: {list(self.tasks)[:10]} (use unknown='global')")
        return torch.tensor([index.get(t, len(self.tasks)) for t in tasks], device=device)

    def transform(self, flat: torch.Tensor, *, tasks: Sequence[str] | None = None) -> torch.Tensor:
        _check_input(flat, self.dim)
        i = self._rows(tasks, flat.shape[0], flat.device)
        mean, std = _on(self.mean, flat.device), _on(self.std, flat.device)
        return ((flat.double() - mean[i, None]) / std[i, None]).to(flat.dtype)

    def inverse(self, flat: torch.Tensor, *, tasks: Sequence[str] | None = None) -> torch.Tensor:
        _check_input(flat, self.dim)
        i = self._rows(tasks, flat.shape[0], flat.device)
        mean, std = _on(self.mean, flat.device), _on(self.std, flat.device)
        return (flat.double() * std[i, None] + mean[i, None]).to(flat.dtype)

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._require_fit()
        return {"mean": self.mean.clone(), "std": self.std.clone()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.mean, self.std = state["mean"].double(), state["std"].double()
        self._fitted = True

    def config(self) -> dict[str, Any]:
        return {"type": "per_task", "unknown": self.unknown, "tasks": list(self.tasks), "dim": self.dim}


class PerLayerZScore(_Fitted):
    """Z-score each tensor of the spec with its own mean and std over the zoo.

    Args:
        spec: The architecture the vectors follow.
        log: Glob patterns of tensors to log-transform first (they must be positive),
            by default BatchNorm ``running_var``, whose scale spans orders of magnitude.
    """

    _stats = ("mean", "std", "_segments", "_log_entry")

    def __init__(self, spec: ParamSpec, *, log: Sequence[str] = ("*running_var",)) -> None:
        self.spec = spec
        self.log = tuple(log)
        self._segments = spec.segment_ids()  # (D,)
        tensors = spec.vector_tensors
        self._log_tensor = torch.tensor([_matches(t.name, self.log) for t in tensors])  # (T,)
        self._log_entry = self._log_tensor[self._segments]  # (D,)
        self._has_log = bool(self._log_tensor.any())  # a Python bool: no device sync per call
        self.mean = torch.zeros(len(tensors), dtype=torch.float64)
        self.std = torch.ones(len(tensors), dtype=torch.float64)

    def fit(self, flat: torch.Tensor, *, tasks: Sequence[str] | None = None) -> PerLayerZScore:
        _check_input(flat, self.spec.numel)
        x = self._forward_log(flat.double())
        n_t = len(self.spec.vector_tensors)
        seg = _on(self._segments, x.device)
        count = torch.bincount(seg, minlength=n_t).double() * flat.shape[0]
        mean = x.new_zeros(n_t).index_add_(0, seg, x.sum(0)) / count
        var = x.new_zeros(n_t).index_add_(0, seg, (x - mean[seg]).pow(2).sum(0)) / count
        std = var.sqrt()
        self.mean, self.std = mean, torch.where(std > _EPS, std, torch.ones_like(std))
        self._fitted = True
        return self

    def _forward_log(self, x: torch.Tensor) -> torch.Tensor:
        if not self._has_log:
            return x
        entry = _on(self._log_entry, x.device)
        logged = x[:, entry]
        if (logged <= 0).any():
            names = [t.name for t, m in zip(self.spec.vector_tensors, self._log_tensor, strict=True) if m][:5]
            raise ValueError(f"log-normalized tensors must be positive; {names} contain values <= 0")
        x = x.clone()
        x[:, entry] = logged.log()
        return x

    def transform(self, flat: torch.Tensor, *, tasks: Sequence[str] | None = None) -> torch.Tensor:
        self._require_fit()
        _check_input(flat, self.spec.numel)
        x = self._forward_log(flat.double())
        seg = _on(self._segments, x.device)
        return ((x - _on(self.mean, x.device)[seg]) / _on(self.std, x.device)[seg]).to(flat.dtype)

    def inverse(self, flat: torch.Tensor, *, tasks: Sequence[str] | None = None) -> torch.Tensor:
        self._require_fit()
        _check_input(flat, self.spec.numel)
        seg = _on(self._segments, flat.device)
        x = flat.double() * _on(self.std, flat.device)[seg] + _on(self.mean, flat.device)[seg]
        if self._has_log:
            entry = _on(self._log_entry, flat.device)
            x[:, entry] = x[:, entry].exp()
        return x.to(flat.dtype)

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._require_fit()
        return {"mean": self.mean.clone(), "std": self.std.clone()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        n_t = len(self.spec.vector_tensors)
        if state["mean"].shape != (n_t,):
            raise SpecMismatchError(f"statistics are for {state['mean'].shape[0]} tensors, the spec has {n_t}")
        self.mean, self.std = state["mean"].double(), state["std"].double()
        self._fitted = True

    def config(self) -> dict[str, Any]:
        return {"type": "per_layer", "log": list(self.log)}


class GlobalScale(_Fitted):
    """Divide every weight by one scale: the zoo's root mean square.

    Its statistics do not depend on the architecture, so one `GlobalScale` serves a
    family of architectures (`paramgen.vectorize.FamilyVectorizer`), unseen members
    included. With ``log`` patterns, the matching tensors (by default none; BatchNorm
    ``running_var`` is the usual choice) are log-transformed and z-scored with one mean
    and std of their own instead; `fit`, `transform` and `inverse` then need the
    ``spec`` the vectors follow, and a generated variance can never be negative.
    With ``fan_in=True`` every weight matrix or kernel (a tensor of two or more
    dimensions) is first multiplied by ``sqrt(fan_in)``, the inverse of its
    initialization scale, so that wide and narrow layers share one scale: a per-layer
    normalization that needs no per-layer statistics (and also needs the ``spec``).

    Args:
        log: Glob patterns of positive tensors to model in log space.
        fan_in: Measure weight tensors in units of ``1 / sqrt(fan_in)``.

    Examples:
        >>> import torch
        >>> from paramgen.spec import ParamSpec
        >>> spec = ParamSpec.from_module(torch.nn.BatchNorm1d(3))
        >>> flat = spec.flatten([torch.nn.BatchNorm1d(3).state_dict()])[0]
        >>> norm = GlobalScale(log=("*running_var",)).fit(flat, spec=spec)
        >>> torch.allclose(norm.inverse(norm.transform(flat, spec=spec), spec=spec), flat)
        True
    """

    _stats = ("scale", "log_mean", "log_std")

    def __init__(self, *, log: Sequence[str] = (), fan_in: bool = False) -> None:
        self.log = tuple(log)
        self.fan_in = fan_in
        self.scale = torch.ones((), dtype=torch.float64)
        self.log_mean = torch.zeros((), dtype=torch.float64)
        self.log_std = torch.ones((), dtype=torch.float64)

    def _check_spec(self, spec: ParamSpec | None, dim: int) -> ParamSpec:
        if spec is None:
            raise ValueError(f"GlobalScale(log={list(self.log)}, fan_in={self.fan_in}) needs the spec of the vectors (spec=...)")
        if spec.numel != dim:
            raise SpecMismatchError(f"vectors of {dim} values do not follow a spec of {spec.numel}")
        return spec

    def _log_entries(self, spec: ParamSpec | None, dim: int, device: torch.device) -> torch.Tensor | None:
        if not self.log:
            return None
        spec = self._check_spec(spec, dim)
        flags = torch.tensor([_matches(t.name, self.log) for t in spec.vector_tensors])
        return flags[spec.segment_ids()].to(device)  # (D,), built from the spec on the CPU

    def _gain(self, spec: ParamSpec | None, dim: int, device: torch.device) -> torch.Tensor | float:
        """``(D,)`` multipliers: ``sqrt(fan_in)`` on weight tensors of 2+ dims, 1 elsewhere."""
        if not self.fan_in:
            return 1.0
        spec = self._check_spec(spec, dim)
        gains = torch.tensor([math.sqrt(t.numel / t.shape[0]) if len(t.shape) >= 2 and t.numel else 1.0 for t in spec.vector_tensors], dtype=torch.float64)
        return gains[spec.segment_ids()].to(device)  # (D,)

    def fit(self, flat: torch.Tensor, *, tasks: Sequence[str] | None = None, spec: ParamSpec | None = None) -> GlobalScale:
        return self.fit_groups([(flat, spec)])

    def fit_groups(self, groups: Sequence[tuple[torch.Tensor, ParamSpec | None]]) -> GlobalScale:
        """Fit on vectors of several architectures at once: ``[(flat (M_a, D_a), spec_a), ...]``."""
        plain, logged = [], []
        for flat, spec in groups:
            _check_input(flat)
            x = flat.double()
            entries = self._log_entries(spec, flat.shape[1], x.device)
            x_plain = x * self._gain(spec, flat.shape[1], x.device)
            if entries is None:
                plain.append(x_plain.reshape(-1))
                continue
            if (x[:, entries] <= 0).any():
                raise ValueError(f"log-normalized tensors ({list(self.log)}) must be positive; found values <= 0")
            plain.append(x_plain[:, ~entries].reshape(-1))
            logged.append(x[:, entries].log().reshape(-1))
        every = torch.cat(plain)[None]
        self.scale = _std(every, every.new_zeros(()))
        if logged:
            lx = torch.cat(logged)
            self.log_mean = lx.mean()
            std = lx.std(correction=0) if lx.numel() > 1 else lx.new_ones(())
            self.log_std = std if std > _EPS else lx.new_ones(())
        self._fitted = True
        return self

    def transform(self, flat: torch.Tensor, *, tasks: Sequence[str] | None = None, spec: ParamSpec | None = None) -> torch.Tensor:
        self._require_fit()
        _check_input(flat)
        dev = flat.device
        x = flat.double() * self._gain(spec, flat.shape[1], dev) / _on(self.scale, dev)
        entries = self._log_entries(spec, flat.shape[1], dev)
        if entries is not None and entries.any():
            raw = flat.double()[:, entries]
            if (raw <= 0).any():
                raise ValueError(f"log-normalized tensors ({list(self.log)}) must be positive; found values <= 0")
            x[:, entries] = (raw.log() - _on(self.log_mean, dev)) / _on(self.log_std, dev)
        return x.to(flat.dtype)

    def inverse(self, flat: torch.Tensor, *, tasks: Sequence[str] | None = None, spec: ParamSpec | None = None) -> torch.Tensor:
        self._require_fit()
        _check_input(flat)
        dev = flat.device
        x = flat.double() * _on(self.scale, dev) / self._gain(spec, flat.shape[1], dev)
        entries = self._log_entries(spec, flat.shape[1], dev)
        if entries is not None and entries.any():
            x[:, entries] = (flat.double()[:, entries] * _on(self.log_std, dev) + _on(self.log_mean, dev)).exp()
        return x.to(flat.dtype)

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._require_fit()
        return {"scale": self.scale.clone(), "log_mean": self.log_mean.clone(), "log_std": self.log_std.clone()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.scale = state["scale"].double()
        self.log_mean = state.get("log_mean", torch.zeros((), dtype=torch.float64)).double()
        self.log_std = state.get("log_std", torch.ones((), dtype=torch.float64)).double()
        self._fitted = True

    def config(self) -> dict[str, Any]:
        return {"type": "global", "log": list(self.log), "fan_in": self.fan_in}


def normalizer_from_config(
    config: Mapping[str, Any], state: Mapping[str, torch.Tensor], *, spec: ParamSpec | None = None
) -> PerTaskZScore | PerLayerZScore | GlobalScale:
    """Rebuild a fitted normalizer from its ``config()`` and ``state_dict()``."""
    kind = config.get("type")
    norm: PerTaskZScore | PerLayerZScore | GlobalScale
    if kind == "per_task":
        norm = PerTaskZScore(unknown=config["unknown"])
        norm.tasks, norm.dim = tuple(config["tasks"]), config["dim"]
    elif kind == "per_layer":
        if spec is None:
            raise ValueError("a per_layer normalizer needs the spec it was fitted on")
        norm = PerLayerZScore(spec, log=config["log"])
    elif kind == "global":
        norm = GlobalScale(log=config.get("log", ()), fan_in=config.get("fan_in", False))
    else:
        raise ValueError(f"normalizer type must be 'per_task', 'per_layer' or 'global', got {kind!r}")
    norm.load_state_dict(state)
    return norm
