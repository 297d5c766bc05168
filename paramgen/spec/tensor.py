"""One tensor of an architecture (`TensorSpec`), the dtype table and the name helpers
that `paramgen.spec.ParamSpec` builds on."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import attrs
import torch

from paramgen._convert import int_tuple

__all__ = ["Role", "Kind", "TensorSpec", "SpecMismatchError", "NonFiniteWeightsError"]

Role = Literal["vector", "extra", "frozen"]
Kind = Literal["parameter", "buffer"]

_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}


class SpecMismatchError(ValueError):
    """Weights, vectors or checkpoints do not match the spec they are used with."""

    __module__ = "paramgen.spec"  # where users import it from (and tracebacks name it)


class NonFiniteWeightsError(ValueError):
    """Weights contain NaN or Inf."""

    __module__ = "paramgen.spec"


def _dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise TypeError(f"unsupported tensor dtype {dtype}; expected one of {sorted(_DTYPES)}")
    return name


@attrs.frozen
class TensorSpec:
    """One entry of a state dict.

    Attributes:
        name: State-dict key.
        shape: Tensor shape.
        dtype: Dtype name, e.g. ``"float32"``, ``"bfloat16"``, ``"int64"``.
        kind: ``"parameter"`` or ``"buffer"``.
        role: ``"vector"`` (part of the flat weight vector), ``"extra"`` (non-float
            tensor carried along), or ``"frozen"`` (left out by the name filter).
        layer: Index of the module that owns the tensor, in state-dict order.
        offset: Start of the tensor in the flat vector (``-1`` unless ``role="vector"``).
        tied_to: Name of the tensor this one shares storage with, or ``None``. A tied
            entry is stored once, under the first name, and restored under both.
        default: Value used for an extra when none is given (tuple of numbers, flattened).
    """

    name: str
    shape: tuple[int, ...] = attrs.field(converter=int_tuple)
    dtype: str
    kind: Kind = "parameter"
    role: Role = "vector"
    layer: int = 0
    offset: int = -1
    tied_to: str | None = None
    default: tuple[Any, ...] | None = attrs.field(default=None, converter=attrs.converters.optional(tuple))

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    @property
    def is_float(self) -> bool:
        return self.torch_dtype.is_floating_point

    @property
    def module(self) -> str:
        """Owning module's name (``""`` for top-level tensors)."""
        return self.name.rpartition(".")[0]


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _selected(names: Sequence[str], include: Sequence[str] | None, exclude: Sequence[str]) -> bool:
    """Whether a tensor known under ``names`` (several when tied) is selected: one of its
    names is included and none is excluded."""
    return (include is None or any(_matches(n, include) for n in names)) and not any(_matches(n, exclude) for n in names)


def _storage_key(t: torch.Tensor) -> tuple | None:
    if t.numel() == 0 or t.device.type == "meta":
        return None
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _tensor_tuple(values: Iterable[TensorSpec]) -> tuple[TensorSpec, ...]:
    return tuple(values)


# PyTorch registers a module's own tensors in this order (Linear, Conv, norms, BatchNorm's statistics).
_LEAF_ORDER = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _canonical_key(name: str) -> tuple[Any, ...]:
    """Sort key of a tensor name: its module path with numbers compared as numbers
    (``layer.2`` before ``layer.10``), then the module's own tensors in PyTorch's order."""
    module, _, leaf = name.rpartition(".")
    path = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in module.split(".")) if module else ()
    rank = _LEAF_ORDER.index(leaf) if leaf in _LEAF_ORDER else len(_LEAF_ORDER)
    return (path, rank, leaf)
