"""Invertible normalizers for flat weight vectors ``(B, D)`` in spec order.

Generative models of weights learn far better on standardized inputs (Cond P-Diff,
table 4a). Four normalizers, all with ``fit`` / ``transform`` / ``inverse`` and statistics
that travel with the generator through ``state_dict`` (tensors, for safetensors) and
``config`` (JSON, rebuilt by `normalizer_from_config` from its ``"type"``):

- `PerTaskZScore` (``"per_task"``): one mean and std per task (Cond P-Diff).
- `PerLayerZScore` (``"per_layer"``): one mean and std per tensor of the spec, optionally
  after a log transform of positive tensors such as BatchNorm ``running_var``.
- `ChunkStats` (``"per_chunk"``): the same per-tensor z-score over the tensors of a chunk
  layout, fitted in one streaming pass and applied to rows of chunks (large models, see
  `paramgen.chunkwise`).
- `GlobalScale` (``"global"``): one scale for everything.

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

from paramgen.chunks import ChunkLayout
from paramgen.registry import Configurable
from paramgen.spec import NonFiniteWeightsError, ParamSpec, SpecMismatchError, _matches

__all__ = [
    "Normalizer",
    "PerTaskZScore",
    "PerLayerZScore",
    "ChunkStats",
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


def _zscore(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``(x - mean[index]) / std[index]``: a per-tensor z-score, ``index`` naming each value's tensor."""
    return (x - _on(mean, x.device)[index]) / _on(std, x.device)[index]


def _unzscore(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x * std[index] + mean[index]``: the inverse of `_zscore`."""
    return x * _on(std, x.device)[index] + _on(mean, x.device)[index]


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


class _PerTensor(_Fitted):
    """Statistics of a per-tensor z-score: a mean and a std per tensor, ``(T,)`` float64."""

    _stats: tuple[str, ...] = ("mean", "std")
    mean: torch.Tensor
    std: torch.Tensor

    def _num_tensors(self) -> int:
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._require_fit()
        return {"mean": self.mean.clone(), "std": self.std.clone()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        n_t = self._num_tensors()
        for key in ("mean", "std"):
            if key not in state:
                raise KeyError(key)
            if tuple(state[key].shape) != (n_t,):
                raise SpecMismatchError(f"statistics are for {state[key].shape[0] if state[key].ndim == 1 else tuple(state[key].shape)} tensors, the spec has {n_t}")
        self.mean, self.std = state["mean"].double(), state["std"].double()
        self._fitted = True


class PerTaskZScore(_Fitted, Configurable):
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
    config_constants = {"type": "per_task"}

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
        """The constructor's arguments, then what `fit` found: the tasks and the width."""
        return {**super().config(), "tasks": list(self.tasks), "dim": self.dim}


class PerLayerZScore(_PerTensor, Configurable):
    """Z-score each tensor of the spec with its own mean and std over the zoo.

    Args:
        spec: The architecture the vectors follow.
        log: Glob patterns of tensors to log-transform first (they must be positive),
            by default BatchNorm ``running_var``, whose scale spans orders of magnitude.
    """

    _stats = ("mean", "std", "_segments", "_log_entry")
    config_constants = {"type": "per_layer"}
    config_ignore = ("spec",)  # the generator's, given back by normalizer_from_config

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
        return _zscore(x, self.mean, self.std, _on(self._segments, x.device)).to(flat.dtype)

    def inverse(self, flat: torch.Tensor, *, tasks: Sequence[str] | None = None) -> torch.Tensor:
        self._require_fit()
        _check_input(flat, self.spec.numel)
        x = _unzscore(flat.double(), self.mean, self.std, _on(self._segments, flat.device))
        if self._has_log:
            entry = _on(self._log_entry, flat.device)
            x[:, entry] = x[:, entry].exp()
        return x.to(flat.dtype)

    def _num_tensors(self) -> int:
        return len(self.spec.vector_tensors)


class ChunkStats(_PerTensor):
    """Z-score each tensor of a chunk layout with its own mean and std over the zoo.

    The normalizer of chunk-wise generators (`paramgen.chunkwise`): the per-tensor
    z-score of `PerLayerZScore` (without log transforms) over the tensors a
    `paramgen.chunks.ChunkLayout` covers, for models too large to be one vector in
    memory. `fit_chunks` computes the statistics in one streaming pass over a
    `paramgen.chunks.ChunkDataset` (float64 sums of values and of their squares), and
    `transform_chunks` / `inverse_chunks` apply them to rows of chunks, each row the
    chunk its id names. So LayerNorm scales near 1 and attention weights near 0.05
    become one distribution of values. A constant tensor gets std 1.

    As a `Normalizer`, `fit`, `transform` and `inverse` take whole models as flat vectors
    ``(B, D)``: the layout's tensors, flattened and concatenated in layout order.

    Args:
        layout: The chunk layout whose tensors are standardized.

    Attributes:
        mean: ``(T,)`` float64, one per tensor of the layout.
        std: ``(T,)`` float64.

    Examples:
        >>> import torch
        >>> from paramgen.chunks import ChunkDataset, ChunkLayout
        >>> from paramgen.spec import ParamSpec
        >>> sd = {"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([10.0, 10.0, 10.0])}
        >>> layout = ChunkLayout(ParamSpec.from_state_dict(sd), 2)
        >>> stats = ChunkStats(layout).fit_chunks(ChunkDataset.from_state_dicts(layout, [sd]))
        >>> stats.mean.tolist(), stats.std.tolist()
        ([2.0, 10.0], [1.0, 1.0])
        >>> stats.transform_chunks(torch.tensor([[1.0, 3.0], [10.0, 0.0]]), torch.tensor([0, 1])).tolist()
        [[-1.0, 1.0], [0.0, -10.0]]
    """

    def __init__(self, layout: ChunkLayout) -> None:
        if not isinstance(layout, ChunkLayout):
            raise TypeError(f"ChunkStats takes a paramgen.chunks.ChunkLayout, got {type(layout).__name__}")
        self.layout = layout
        t = len(layout.tensors)
        self.mean = torch.zeros(t, dtype=torch.float64)
        self.std = torch.ones(t, dtype=torch.float64)

    def _num_tensors(self) -> int:
        return len(self.layout.tensors)

    def _segments(self, device: torch.device) -> torch.Tensor:
        """``(D,)`` tensor index of each value of a flat model (built per call: large models
        are standardized chunk by chunk, and a stored ``(D,)`` index would cost 8 bytes a value)."""
        sizes = torch.tensor([t.numel for t in self.layout.tensors])
        return torch.repeat_interleave(torch.arange(len(sizes)), sizes).to(device)

    def _finish(self, total: torch.Tensor, sq: torch.Tensor, count: torch.Tensor) -> ChunkStats:
        """Mean and std from per-tensor sums of values, of squares, and counts (float64)."""
        mean = total / count
        var = (sq / count - mean.pow(2)).clamp_min(0.0)
        std = var.sqrt()
        self.mean = mean
        self.std = torch.where(std > 1e-8 * mean.abs().clamp_min(1.0), std, torch.ones_like(std))
        self._fitted = True
        return self

    def fit(self, flat: torch.Tensor, *, tasks: Sequence[str] | None = None) -> ChunkStats:
        """Fit on whole models, ``(B, D)`` flat vectors of the layout's tensors (small models)."""
        _check_input(flat, self.layout.numel)
        x = flat.double()
        seg = self._segments(x.device)
        n_t = self._num_tensors()
        total = x.new_zeros(n_t).index_add_(0, seg, x.sum(0))
        sq = x.new_zeros(n_t).index_add_(0, seg, x.pow(2).sum(0))
        count = torch.bincount(seg, minlength=n_t).double() * flat.shape[0]
        return self._finish(total, sq, count)

    def fit_chunks(self, data: Any, *, batch_size: int = 256, num_workers: int = 0) -> ChunkStats:
        """Fit in one streaming pass over a `paramgen.chunks.ChunkDataset` of this layout.

        Raises:
            ValueError: The dataset's layout is another one.
        """
        layout = getattr(data, "layout", None)
        if not isinstance(layout, ChunkLayout) or layout.config() != self.layout.config() or layout.spec.fingerprint != self.layout.spec.fingerprint:
            raise ValueError("ChunkStats.fit_chunks: the dataset's chunk layout differs from the normalizer's")
        t = self._num_tensors()
        total = torch.zeros(t, dtype=torch.float64)
        sq = torch.zeros(t, dtype=torch.float64)
        count = torch.zeros(t, dtype=torch.float64)
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=num_workers)
        for batch in loader:
            v = batch["values"].double() * batch["mask"]  # (B, K)
            tid = batch["tensor"]
            total.index_add_(0, tid, v.sum(1))
            sq.index_add_(0, tid, v.pow(2).sum(1))
            count.index_add_(0, tid, batch["mask"].sum(1).double())
        return self._finish(total, sq, count)

    def transform(self, flat: torch.Tensor, *, tasks: Sequence[str] | None = None) -> torch.Tensor:
        self._require_fit()
        _check_input(flat, self.layout.numel)
        return _zscore(flat.double(), self.mean, self.std, self._segments(flat.device)).to(flat.dtype)

    def inverse(self, flat: torch.Tensor, *, tasks: Sequence[str] | None = None) -> torch.Tensor:
        self._require_fit()
        _check_input(flat, self.layout.numel)
        return _unzscore(flat.double(), self.mean, self.std, self._segments(flat.device)).to(flat.dtype)

    def _tensor_ids(self, values: torch.Tensor, chunk_ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """``(B, 1)`` tensor of each row's chunk, on the rows' device."""
        self._require_fit()
        ids = torch.as_tensor(chunk_ids, dtype=torch.long).reshape(-1).cpu()
        if values.ndim != 2 or values.shape[0] != ids.numel():
            raise ValueError(f"expected rows of chunks (B, K) and B chunk ids, got values {tuple(values.shape)} and {ids.numel()} ids")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.layout.num_chunks):
            raise ValueError(f"chunk ids must lie in [0, {self.layout.num_chunks}), got {int(ids.min())}..{int(ids.max())}")
        return self.layout.tensor_ids[ids].to(values.device)[:, None]

    def transform_chunks(self, values: torch.Tensor, chunk_ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Standardize rows of chunks ``(B, K)``, row ``i`` being chunk ``chunk_ids[i]``.

        Computed in float32, the dtype of the training rows; padding past a tensor's end
        is standardized like the rest (mask it).
        """
        t = self._tensor_ids(values, chunk_ids)
        return _zscore(values.float(), self.mean.float(), self.std.float(), t)

    def inverse_chunks(self, values: torch.Tensor, chunk_ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Rows of standardized chunks ``(B, K)`` back at their tensors' scale (computed in
        float64, returned in float32, on the rows' device)."""
        t = self._tensor_ids(values, chunk_ids)
        return _unzscore(values.double(), self.mean, self.std, t).float()

    def config(self) -> dict[str, Any]:
        """The layout's chunking (its spec is the generator's, passed to `normalizer_from_config`)."""
        return {"type": "per_chunk", "layout": self.layout.config()}


class GlobalScale(_Fitted, Configurable):
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
    config_constants = {"type": "global"}

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


def normalizer_from_config(
    config: Mapping[str, Any], state: Mapping[str, torch.Tensor], *, spec: ParamSpec | None = None
) -> PerTaskZScore | PerLayerZScore | ChunkStats | GlobalScale:
    """Rebuild a fitted normalizer from its ``config()`` and ``state_dict()``.

    ``spec`` is the architecture the statistics describe (needed by ``"per_layer"`` and
    ``"per_chunk"``).

    Examples:
        >>> import torch
        >>> norm = normalizer_from_config({"type": "global"}, {"scale": torch.tensor(2.0, dtype=torch.float64)})
        >>> norm.inverse(torch.ones(1, 3)).tolist()
        [[2.0, 2.0, 2.0]]
    """
    kind = config.get("type")
    norm: PerTaskZScore | PerLayerZScore | ChunkStats | GlobalScale
    if kind == "per_task":
        norm = PerTaskZScore.from_config({k: v for k, v in config.items() if k not in ("tasks", "dim")})
        norm.tasks, norm.dim = tuple(config["tasks"]), config["dim"]
    elif kind == "per_layer":
        if spec is None:
            raise ValueError("a per_layer normalizer needs the spec it was fitted on")
        norm = PerLayerZScore.from_config(config, spec=spec)
    elif kind == "per_chunk":
        if spec is None:
            raise ValueError("a per_chunk normalizer needs the spec of the model its layout cuts")
        norm = ChunkStats(ChunkLayout(spec, **config["layout"]))
    elif kind == "global":
        norm = GlobalScale.from_config(config)
    else:
        raise ValueError(f"normalizer type must be 'per_task', 'per_layer', 'per_chunk' or 'global', got {kind!r}")
    norm.load_state_dict(state)
    return norm
