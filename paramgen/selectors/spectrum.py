"""Spectrum layer selection (Hartford et al. 2024; D2NWG sec. 3.5 and app. A.3).

Each weight matrix ``W`` (``m x n``) is scored by the signal-to-noise ratio of its
singular values against a Marchenko-Pastur (MP) bound ``eps``:

``SNR = sum(s[s > eps]) / sum(s[s <= eps])``

Layers are grouped by *type*, the module name after the layer index
(``encoder.layer.3.attention.self.query.weight`` has type ``attention.self.query``), and
the top ``fraction`` of each type by SNR is kept. `SpectrumSelector.select` returns the
narrower `ParamSpec` that a generator then learns.

Two ways to set ``eps`` (``mode``):

- ``"spectrum"`` reproduces the public Spectrum tool
  (github.com/cognitivecomputations/spectrum, ``spectrum.py``): ``sigma`` is the
  interquartile range of the *singular values* over 1.349, ``eps = sigma (1 + sqrt(beta))``
  with ``beta = min(m, n) / max(m, n)``, and the reported score is the ratio divided by the
  largest singular value. As in the tool, an empty "below" set counts as a noise sum of 1,
  and a "below" set summing to zero (e.g. an all-zero matrix) gives ``inf``.
- ``"mp"`` is a properly scaled bound: the noise level ``sigma`` of the *entries* is
  estimated from the median singular value against the median of the MP law (Gavish &
  Donoho 2014: ``sigma = median(s) / sqrt(max(m, n) * mu_beta)``), and
  ``eps = sigma sqrt(max(m, n)) (1 + sqrt(beta))``, the top edge of the spectrum of an
  ``m x n`` matrix of i.i.d. noise. Pure noise scores near 0; a matrix with no signal
  above the edge scores exactly 0; one with nothing below the edge scores ``inf``.

Tensors with more than two dimensions are read as ``(shape[0], prod(shape[1:]))``: a
convolution kernel ``(out, in, k, k)`` is the matrix ``(out, in*k*k)``, the map from an
unfolded input patch to the output channels. One-dimensional tensors (biases, norm
scales) have no spectrum and are skipped (the tool reads them as a ``1 x n`` matrix and
always scores them 1).

Examples:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> noise = torch.randn(200, 100, generator=g)
    >>> layer_snr(noise, mode="mp") < 0.05
    True
    >>> low_rank = torch.randn(200, 3, generator=g) @ torch.randn(3, 100, generator=g)
    >>> layer_snr(low_rank + 0.1 * noise, mode="mp") > 1
    True
    >>> layer_type("encoder.layer.3.attention.self.query.weight")
    'attention.self.query'
"""

from __future__ import annotations

import functools
import glob
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import attrs
import numpy as np
import torch
from torch import nn

from paramgen._convert import int_tuple
from paramgen.spec import NonFiniteWeightsError, ParamSpec, SpecMismatchError

__all__ = [
    "SNRMode",
    "LayerSNR",
    "SpectrumSelector",
    "layer_snr",
    "layer_type",
    "rank_by_type",
]

SNRMode = Literal["spectrum", "mp"]
_MODES = ("spectrum", "mp")

# IQR of a standard normal: the tool's "full IQR" estimate of sigma divides by it.
_IQR_TO_SIGMA = 1.349


# ----------------------------------------------------------------------------- types
def layer_type(name: str) -> str:
    """The type of a tensor's module: the part of its module name after the layer index.

    The module name is the tensor name without its last part (``.weight``). Its first
    all-digit part is the layer index; the type is what follows it. A name whose index
    is last (``classifier.1``) has the part before the index as type; a name with no
    index is its own type.

    Examples:
        >>> layer_type("model.layers.11.mlp.down_proj.weight")
        'mlp.down_proj'
        >>> layer_type("embeddings.word_embeddings.weight")
        'embeddings.word_embeddings'
        >>> layer_type("classifier.1.weight")
        'classifier'
        >>> layer_type("features.17.conv.1.0.weight")  # the first index is the layer
        'conv.1.0'
    """
    module = name.rpartition(".")[0] or name
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            after, before = parts[i + 1 :], parts[:i]
            return ".".join(after or before) or module
    return module


def _type_order(t: str) -> tuple[str, str]:
    # The tool's `sort_weight_types`: by first name part ("attention", "mlp", ...), then by name.
    return (t.split(".")[0], t)


def _natural_key(name: str) -> tuple[tuple[int, int, str], ...]:
    # "layer.10" after "layer.2": a module and its checkpoint (keys sorted as strings) agree.
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split("."))


# ----------------------------------------------------------------------------- SNR
@functools.lru_cache(maxsize=1024)
def _mp_median(beta: float) -> float:
    """Median of the Marchenko-Pastur law with ratio ``beta <= 1`` and unit variance.

    Integrates the density over ``lambda = a + (b - a)(1 - cos t) / 2``, which removes the
    square-root zeros at both edges (and the ``1/sqrt`` pole at 0 when ``beta = 1``).
    """
    a, b = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2
    steps = 20_000
    t = (np.arange(steps) + 0.5) * (math.pi / steps)  # midpoints, (steps,)
    lam = a + (b - a) * (1 - np.cos(t)) / 2
    dens = ((b - a) / 2) ** 2 * np.sin(t) ** 2 / (2 * math.pi * beta * lam)  # density * dlambda/dt
    cdf = np.cumsum(dens)
    cdf /= cdf[-1]
    t_half = np.interp(0.5, cdf, t + math.pi / (2 * steps))  # cdf[i] is reached at the right edge of step i
    return float(a + (b - a) * (1 - math.cos(t_half)) / 2)


def _as_matrix(weight: torch.Tensor) -> torch.Tensor:
    if weight.ndim < 2:
        raise ValueError(f"expected a weight with at least 2 dimensions, got shape {tuple(weight.shape)}")
    if weight.device.type == "meta":
        raise ValueError("cannot compute singular values of a meta tensor; load the weights first")
    w = weight.detach().reshape(weight.shape[0], -1).to(torch.float32)  # (m, n)
    if not torch.isfinite(w).all():
        raise NonFiniteWeightsError("weight contains NaN or Inf")
    return w


def _snr(s: torch.Tensor, m: int, n: int, mode: SNRMode) -> float:
    """SNR of singular values ``s`` (descending) of an ``m x n`` matrix."""
    small, large = min(m, n), max(m, n)
    beta = small / large
    if mode == "spectrum":
        sigma = (torch.quantile(s, 0.75) - torch.quantile(s, 0.25)).item() / _IQR_TO_SIGMA
        eps = sigma * (1 + math.sqrt(beta))
    else:
        sigma = torch.quantile(s, 0.5).item() / math.sqrt(large * _mp_median(beta))
        eps = sigma * math.sqrt(large) * (1 + math.sqrt(beta))
    above = s > eps
    signal = s[above].sum().item()
    noise = s[~above].sum().item()
    if mode == "spectrum":
        if not (~above).any():
            noise = 1.0  # the tool's default for an empty "below" set
        if noise == 0:
            return math.inf
        return signal / noise / s[0].item()
    if signal == 0:
        return 0.0
    return math.inf if noise == 0 else signal / noise


def layer_snr(weight: torch.Tensor, *, mode: SNRMode = "spectrum") -> float:
    """Signal-to-noise ratio of one weight's singular values (see the module docstring).

    The SVD runs in float32 on the weight's device (``torch.linalg.svdvals``).

    Args:
        weight: A tensor with at least 2 dimensions; more are read as
            ``(shape[0], prod(shape[1:]))``.
        mode: ``"spectrum"`` (the Spectrum tool's score) or ``"mp"`` (scaled MP bound).

    Raises:
        ValueError: A 1-D or meta tensor, or an unknown mode.
        NonFiniteWeightsError: The weight holds NaN or Inf.

    Examples:
        >>> import torch
        >>> layer_snr(torch.eye(4), mode="spectrum")  # IQR 0: all signal, empty noise counts as 1
        4.0
        >>> layer_snr(torch.eye(4), mode="mp")  # a flat spectrum: nothing above the noise edge
        0.0
    """
    _check_mode(mode)
    w = _as_matrix(weight)
    s = torch.linalg.svdvals(w)  # (min(m, n),), descending
    return _snr(s, w.shape[0], w.shape[1], mode)


def _check_mode(mode: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"unknown SNR mode {mode!r}; expected one of {list(_MODES)}")


# ----------------------------------------------------------------------------- table
@attrs.frozen
class LayerSNR:
    """One row of the SNR table.

    Attributes:
        name: Tensor name, e.g. ``"encoder.layer.3.attention.self.query.weight"``.
        type: Its `layer_type`, e.g. ``"attention.self.query"``.
        shape: Tensor shape (before reading it as a matrix).
        snr: The score in the selector's mode (``inf`` possible, never NaN).
        selected: Whether it is in the top ``fraction`` of its type.
    """

    name: str
    type: str
    shape: tuple[int, ...] = attrs.field(converter=int_tuple)
    snr: float
    selected: bool = False


def rank_by_type(table: Iterable[LayerSNR]) -> dict[str, list[LayerSNR]]:
    """Rows grouped by type (in the tool's type order), each group by SNR, highest first.

    Examples:
        >>> rows = [LayerSNR("a.0.q.weight", "q", (2, 2), 0.1), LayerSNR("a.1.q.weight", "q", (2, 2), 0.3)]
        >>> [r.name for r in rank_by_type(rows)["q"]]
        ['a.1.q.weight', 'a.0.q.weight']
    """
    groups: dict[str, list[LayerSNR]] = {}
    for row in table:
        groups.setdefault(row.type, []).append(row)
    return {
        t: sorted(sorted(rows, key=lambda r: _natural_key(r.name)), key=lambda r: -r.snr)
        for t, rows in sorted(groups.items(), key=lambda item: _type_order(item[0]))
    }


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _check_fraction(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {value!r}")


def _check_mode_field(instance: object, attribute: attrs.Attribute, value: str) -> None:
    _check_mode(value)


_Source = nn.Module | Mapping[str, torch.Tensor] | str | os.PathLike


@attrs.frozen(kw_only=True)
class SpectrumSelector:
    """Keeps the top ``fraction`` of weight matrices of each layer type by SNR.

    Implements `paramgen.interfaces.Selector`. Per type with ``n`` matrices it keeps
    ``max(1, floor(fraction * n))`` (the tool floors too, but may keep none); ties keep
    name order (layer indices compared as numbers).

    Attributes:
        fraction: Share of each type to keep, in ``(0, 1]``; D2NWG keeps 25 %.
        mode: ``"spectrum"`` (the Spectrum tool's score) or ``"mp"`` (scaled MP bound).
        include_bias: Also put the ``.bias`` of a selected ``.weight`` in the narrower
            spec: D2NWG generates whole layers.

    Examples:
        >>> import torch
        >>> net = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(4)])
        >>> sel = SpectrumSelector(fraction=0.5)
        >>> [(r.name, r.type) for r in sel.scan(net)][:2]
        [('0.weight', '0'), ('1.weight', '1')]
        >>> spec = sel.select(net, ParamSpec.from_module(net))
        >>> [t.name for t in spec.vector_tensors]  # one per type: each index is its own type here
        ['0.weight', '0.bias', '1.weight', '1.bias', '2.weight', '2.bias', '3.weight', '3.bias']
    """

    fraction: float = attrs.field(default=0.25, validator=_check_fraction)
    mode: SNRMode = attrs.field(default="spectrum", validator=_check_mode_field)
    include_bias: bool = True

    # ------------------------------------------------------------------ scanning
    def scan(self, source: _Source, *, names: Sequence[str] | None = None) -> list[LayerSNR]:
        """The SNR table of every floating tensor with 2 or more dimensions.

        Args:
            source: An ``nn.Module``, a state dict, or the path of a safetensors file
                (streamed, see `scan_file`).
            names: Only these tensors (all must exist; 1-D ones are skipped).

        Returns:
            Rows grouped by type (the tool's order: by first name part, then name), each
            group in name order, with ``selected`` set.
        """
        if isinstance(source, (str, os.PathLike)):
            return self.scan_file(source, names=names)
        if isinstance(source, nn.Module):
            source = source.state_dict()
        if not isinstance(source, Mapping):
            raise TypeError(f"expected an nn.Module, a state dict or a safetensors path, got {type(source).__name__}")
        wanted = self._check_names(names, source.keys())
        seen: set[tuple] = set()
        rows: list[LayerSNR] = []
        for name, t in source.items():
            if wanted is not None and name not in wanted:
                continue
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"state dict entry {name!r} is a {type(t).__name__}, expected a tensor")
            if t.device.type != "meta":
                key = _storage_key(t)
                if key in seen:  # a tied copy: scored once, under its first name
                    continue
                seen.add(key)
            if t.ndim >= 2 and t.is_floating_point():
                row = self._row(name, t)
                assert row is not None  # a floating tensor always gets a row
                rows.append(row)
        return self._finish(rows)

    def scan_file(
        self, path: str | os.PathLike, *, names: Sequence[str] | None = None, device: str | torch.device = "cpu"
    ) -> list[LayerSNR]:
        """The SNR table of a safetensors checkpoint, read one tensor at a time.

        The file is memory mapped (``safetensors.safe_open``); each tensor is loaded,
        scored and released before the next, so memory holds one tensor, never the model.

        Args:
            path: A ``.safetensors`` file.
            names: Only these tensors.
            device: Where each tensor is loaded and its SVD computed.

        Raises:
            FileNotFoundError: No such file.
            ValueError: The file is not safetensors.
        """
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no safetensors file at {path}")
        try:
            handle = safe_open(str(path), framework="pt", device=str(device))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path}: expected a safetensors file, could not read its header ({err})") from err
        rows = []
        with handle as f:
            keys = list(f.keys())
            wanted = self._check_names(names, keys)
            for name in keys:
                if wanted is not None and name not in wanted:
                    continue
                shape = f.get_slice(name).get_shape()  # header only, no data read
                if len(shape) < 2:
                    continue
                # The tensor lives only inside `_row`'s frame: freed before the next read.
                row = self._row(name, f.get_tensor(name))
                if row is not None:
                    rows.append(row)
        return self._finish(rows)

    def _row(self, name: str, t: torch.Tensor) -> LayerSNR | None:
        if not t.is_floating_point():
            return None
        try:
            snr = layer_snr(t, mode=self.mode)
        except NonFiniteWeightsError as err:
            raise NonFiniteWeightsError(f"tensor {name!r}: {err}") from err
        return LayerSNR(name=name, type=layer_type(name), shape=tuple(t.shape), snr=snr)

    @staticmethod
    def _check_names(names: Sequence[str] | None, available: Iterable[str]) -> set[str] | None:
        if names is None:
            return None
        wanted = set(names)
        missing = wanted.difference(available)
        if missing:
            raise SpecMismatchError(f"tensors {sorted(missing)[:5]} are not in the scanned model or file")
        return wanted

    def _finish(self, rows: list[LayerSNR]) -> list[LayerSNR]:
        if not rows:
            raise ValueError("found no floating tensor with 2 or more dimensions to score")
        chosen: set[str] = set()
        for group in rank_by_type(rows).values():
            keep = max(1, math.floor(self.fraction * len(group) + 1e-9))  # 1e-9: 0.29 * 100 is 28.999...
            chosen.update(r.name for r in group[:keep])
        ordered = sorted(rows, key=lambda r: (_type_order(r.type), _natural_key(r.name)))
        return [attrs.evolve(r, selected=r.name in chosen) for r in ordered]

    # ------------------------------------------------------------------ selecting
    def select(self, model: _Source, spec: ParamSpec, *, table: Sequence[LayerSNR] | None = None) -> ParamSpec:
        """The spec narrowed to the selected matrices (and their biases).

        Only the spec's vector tensors are scored, so a spec already narrowed by a name
        filter stays within it. Tensors that are not selected become ``"frozen"``.

        Args:
            model: The model the spec describes, its state dict, or its safetensors file.
            spec: The model's spec.
            table: A table from `scan` of this model, to skip scanning again.

        Raises:
            SpecMismatchError: The table or model names tensors the spec does not have.
        """
        matrices = [t.name for t in spec.vector_tensors if len(t.shape) >= 2]
        if not matrices:
            raise ValueError("the spec's vector has no tensor with 2 or more dimensions to score")
        if table is None:
            table = self.scan(model, names=matrices)
        vector = {t.name for t in spec.vector_tensors}
        chosen = [r.name for r in table if r.selected]
        unknown = [n for n in chosen if n not in vector]
        if unknown:
            raise SpecMismatchError(f"selected tensors {unknown[:5]} are not in the spec's vector")
        keep = set(chosen)
        if self.include_bias:
            for name in chosen:
                if name == "weight" or name.endswith(".weight"):
                    bias = name.removesuffix("weight") + "bias"
                    if bias in vector:
                        keep.add(bias)
        return spec.select(include=[glob.escape(n) for n in sorted(keep)])

