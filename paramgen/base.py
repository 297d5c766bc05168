"""A pinned base checkpoint: generators learn and sample deltas ``D = w - w_base`` over it.

Fine-tunes of one pretrained model differ from it by about 1 % of its norm (Cond P-Diff,
Text-to-LoRA and RPG's DoRA runs generate such deltas or adapters over a frozen base).
`PinnedBase` is that base as data: its tensors (read lazily from a safetensors file, or
held as a state dict), their shapes and dtypes, and a SHA-256 digest that zoos
(`paramgen.zoo.ZooWriter`), datasets (`paramgen.chunks.ChunkDataset`) and saved
generators (`paramgen.Generator`, `paramgen.chunkwise.ChunkwiseGenerator`) record, so
that a delta is never applied to another base: `PinnedBase.check` refuses it by name.

Exactness. `PinnedBase.delta` subtracts in float64 and `PinnedBase.apply` adds in float64
and casts to the base tensor's dtype. ``apply(delta(w)) == w`` holds bit for bit when
``w`` has the base tensor's dtype and, element by element, ``w == 0`` or ``b == 0`` or

    max(|w|, |b|) < 2 ** (52 - p) * min(|w|, |b|)

where ``p`` is the precision of the dtype in bits (24 for float32, 8 for bfloat16, 11 for
float16): ``w`` and ``b`` are integer multiples of the quantum of the smaller one, their
difference is one of at most ``p + k + 1`` bits (``k`` the distance of their binary
exponents), which float64's 53 bits hold when ``k <= 52 - p``; ``b + D`` is then ``w`` as a
real number, so float64 rounds it to ``w``, and ``w`` survives the cast back. That is a
ratio below 2.7e8 for float32 (1.7e13 for bfloat16, 2.2e12 for float16): fine-tunes are far
inside (``w = b * (1 + eps)``, ``w == b``, weights moved from or to zero). Outside it (e.g.
``w = 1e-10`` on ``b = 1``) the error is at most ``2**-(p) * |w| + 2**-51 * (|w| + |b|)``
(float64 rounding of ``D`` and of the sum, then the cast). float64 weights are exact when
Sterbenz's lemma applies (``b / 2 <= w <= 2 * b``). A delta stored in float32 (what a
generator learns) is exact under Sterbenz's lemma for float32 weights, or when ``w`` or
``b`` is zero.

Non-finite weights (NaN, Inf) in ``w``, ``b`` or ``D`` raise instead of being passed on.

Examples:
    >>> import torch
    >>> base = PinnedBase.of({"w": torch.tensor([1.0, -2.0, 0.5])})
    >>> tuned = {"w": torch.tensor([1.01, -1.98, 0.0])}
    >>> delta = base.delta(tuned)
    >>> delta["w"].dtype, torch.equal(base.apply(delta)["w"], tuned["w"])
    (torch.float64, True)
    >>> base.record()["tensors"]
    {'w': [[3], 'float32']}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from paramgen.formats.safetensors import read_header
from paramgen.io import file_sha256

__all__ = ["BaseMismatchError", "PinnedBase"]

logger = logging.getLogger(__name__)


class BaseMismatchError(ValueError):
    """A base checkpoint is not the one recorded (another digest, a tensor of another
    shape or dtype, a missing tensor), or a base is missing where one is recorded; the
    message names what was expected and what was found."""


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _canonical_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of the safetensors bytes of ``state`` (names sorted, no metadata): the digest
    of a file written by ``safetensors.torch.save_file(state)``."""
    import hashlib

    from safetensors.torch import save

    ptrs: dict[int, int] = {}
    for v in state.values():
        ptrs[v.untyped_storage().data_ptr()] = ptrs.get(v.untyped_storage().data_ptr(), 0) + 1
    # safetensors refuses tensors that share storage (tied weights): those are copied.
    clean = {
        k: (v.detach().cpu().contiguous().clone() if ptrs[v.untyped_storage().data_ptr()] > 1 else v.detach().cpu().contiguous())
        for k, v in sorted(state.items())
    }
    return hashlib.sha256(save(clean)).hexdigest()


def _names_shapes(target: Any) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, shape)`` of what ``check_covers`` is given: a `paramgen.spec.ParamSpec`
    (its vector tensors), a `paramgen.chunks.ChunkLayout` (its tensors), a mapping name ->
    shape, or ``(name, shape)`` pairs."""
    if hasattr(target, "vector_tensors"):  # a ParamSpec
        return [(t.name, tuple(t.shape)) for t in target.vector_tensors]
    if hasattr(target, "chunk_size") and hasattr(target, "tensors"):  # a ChunkLayout
        return [(t.name, tuple(t.shape)) for t in target.tensors]
    if isinstance(target, Mapping):
        return [(str(k), tuple(v)) for k, v in target.items()]
    if isinstance(target, Iterable) and not isinstance(target, (str, bytes)):
        return [(str(k), tuple(v)) for k, v in target]
    raise TypeError(f"check_covers takes a ParamSpec, a ChunkLayout, a mapping name -> shape or (name, shape) pairs, got {type(target).__name__}")


class PinnedBase:
    """A base checkpoint that deltas are taken against: ``D = w - w_base``.

    Build one with `of`. Read from a safetensors file, its tensors stay on disk until
    asked for (`tensor`, `read_flat`); from a state dict or a module, its tensors are
    referenced, not copied.

    Attributes:
        path: The safetensors file it was read from, or ``None`` (a state dict).
        sha256: The file's SHA-256 (`paramgen.io.file_sha256`); for a state dict, the
            SHA-256 of its canonical safetensors bytes (names sorted, no metadata), equal
            to the digest of the file ``safetensors.torch.save_file(state)`` writes.
        tensors: Name -> ``(shape, dtype name)`` of every tensor of the base.

    Examples:
        >>> import tempfile, torch
        >>> from safetensors.torch import save_file
        >>> state = {"w": torch.ones(2, 3), "b": torch.zeros(2)}
        >>> path = tempfile.mkdtemp() + "/base.safetensors"
        >>> save_file(state, path)
        >>> PinnedBase.of(path).sha256 == PinnedBase.of(state).sha256
        True
        >>> PinnedBase.of(path).tensors["w"]
        ((2, 3), 'float32')
    """

    def __init__(
        self, *, sha256: str, tensors: Mapping[str, tuple[tuple[int, ...], str]], path: Path | None = None, state: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        if (path is None) == (state is None):
            raise ValueError("PinnedBase: give a path or a state dict (use PinnedBase.of)")
        self.path = path
        self.sha256 = sha256
        self.tensors = {k: (tuple(int(s) for s in shape), str(dtype)) for k, (shape, dtype) in tensors.items()}
        self._state = None if state is None else dict(state)
        self._cached: tuple[str, torch.Tensor] | None = None  # the last tensor read whole by read_flat

    @classmethod
    def of(cls, source: str | os.PathLike | Mapping[str, torch.Tensor] | nn.Module | PinnedBase) -> PinnedBase:
        """A pinned base from a safetensors path, a state dict, a module, or a `PinnedBase` (returned as is).

        Raises:
            ValueError: The file is missing or not a safetensors file.
            TypeError: Another kind of source, or a state dict entry that is not a tensor.
        """
        if isinstance(source, PinnedBase):
            return source
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise ValueError(f"base checkpoint {path} does not exist or is not a file (expected a .safetensors file)")
            header = read_header(path)
            tensors = {name: (tuple(e.shape), e.dtype_name) for name, e in header.tensors.items()}
            return cls(sha256=file_sha256(path), tensors=tensors, path=path)
        if isinstance(source, nn.Module):
            source = source.state_dict()
        if not isinstance(source, Mapping):
            raise TypeError(f"a base is a safetensors path, a state dict, a module or a PinnedBase, got {type(source).__name__}")
        state: dict[str, torch.Tensor] = {}
        for name, x in source.items():
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"base state dict entry {name!r} is a {type(x).__name__}, expected a tensor")
            state[str(name)] = x.detach()
        if not state:
            raise ValueError("a base state dict needs at least one tensor, got none")
        tensors = {name: (tuple(x.shape), _dtype_name(x.dtype)) for name, x in state.items()}
        return cls(sha256=_canonical_sha256(state), tensors=tensors, state=state)

    def __repr__(self) -> str:
        where = str(self.path) if self.path is not None else "a state dict"
        return f"PinnedBase({where}, {len(self.tensors)} tensors, sha256 {self.sha256[:12]}...)"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cached"] = None  # re-read in the process that needs it
        return state

    # ------------------------------------------------------------------ records
    def record(self) -> dict[str, Any]:
        """The JSON-able record saved with zoos and generators: ``{"sha256": ..., "tensors": {name: [shape, dtype]}}``."""
        return {"sha256": self.sha256, "tensors": {name: [list(shape), dtype] for name, (shape, dtype) in self.tensors.items()}}

    def check(self, record: Mapping[str, Any], *, what: str = "the base") -> None:
        """Check that this base is the one ``record`` (a `record`) describes.

        Tensors are compared first (the first missing, extra or differing one is named),
        then the digest.

        Raises:
            BaseMismatchError: Another base (names the tensor, or both digests).
            ValueError: ``record`` is not a base record.
        """
        if not isinstance(record, Mapping) or not isinstance(record.get("sha256"), str) or not isinstance(record.get("tensors"), Mapping):
            raise ValueError(f"{what}: expected a base record with 'sha256' and 'tensors', got {str(record)[:200]}")
        recorded = {str(k): (tuple(v[0]), str(v[1])) for k, v in record["tensors"].items()}
        for name, (shape, dtype) in recorded.items():
            if name not in self.tensors:
                raise BaseMismatchError(f"{what} expected tensor {name!r} {shape} {dtype} in the base; {self!r} lacks it (recorded sha256 {record['sha256']})")
            if self.tensors[name] != (shape, dtype):
                found = self.tensors[name]
                raise BaseMismatchError(
                    f"{what}: base tensor {name!r} is {found[0]} {found[1]}, expected {shape} {dtype} (recorded sha256 {record['sha256']}, this base {self.sha256})"
                )
        extra = [name for name in self.tensors if name not in recorded]
        if extra:
            raise BaseMismatchError(f"{what}: the base has tensor {extra[0]!r} that the recorded base lacks ({len(extra)} more tensors; recorded sha256 {record['sha256']}, this base {self.sha256})")
        if record["sha256"] != self.sha256:
            raise BaseMismatchError(f"{what} expected the base with sha256 {record['sha256']}, got {self.sha256} ({self!r}): same tensors, other values")

    def check_covers(self, target: Any, *, what: str = "the model") -> None:
        """Check that the base has every tensor ``target`` needs, with the same shape.

        Args:
            target: A `paramgen.spec.ParamSpec` (its vector tensors), a
                `paramgen.chunks.ChunkLayout` (its tensors), a mapping name -> shape, or
                ``(name, shape)`` pairs.
            what: Names the target in the error.

        Raises:
            BaseMismatchError: A tensor missing from the base, of another shape, or not
                floating (named).
        """
        for name, shape in _names_shapes(target):
            if name not in self.tensors:
                raise BaseMismatchError(f"the base does not cover {what}: it lacks tensor {name!r} {shape} ({self!r})")
            found, dtype = self.tensors[name]
            if found != shape:
                raise BaseMismatchError(f"the base does not cover {what}: tensor {name!r} is {found} in the base, expected {shape}")
            if not getattr(torch, dtype, torch.int64).is_floating_point:
                raise BaseMismatchError(f"the base does not cover {what}: tensor {name!r} is {dtype} in the base, expected a floating dtype")

    # ------------------------------------------------------------------ tensors
    def _need(self, name: str) -> None:
        if name not in self.tensors:
            raise BaseMismatchError(f"the base has no tensor {name!r} ({self!r})")

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor of the base (read from the file when the base is one), on the CPU for a file.

        Raises:
            BaseMismatchError: The base has no such tensor.
        """
        self._need(name)
        if self._state is not None:
            return self._state[name]
        from safetensors import safe_open

        assert self.path is not None
        with safe_open(str(self.path), framework="pt") as f:
            return f.get_tensor(name)

    def read_flat(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Values ``[start, stop)`` of one tensor, flattened (its dtype). The last tensor
        read is kept, so reading a tensor chunk by chunk, in order, reads it once."""
        if self._cached is None or self._cached[0] != name:
            self._cached = (name, self.tensor(name).reshape(-1))
        return self._cached[1][start:stop]

    def vector(self, spec: Any) -> torch.Tensor:
        """``(D,)`` float64: the base's vector tensors of ``spec`` (a `paramgen.spec.ParamSpec`)
        in its vector order, as ``spec.flatten`` lays a model out.

        Raises:
            BaseMismatchError: The base does not cover the spec.
        """
        self.check_covers(spec)
        parts = [self.tensor(t.name).reshape(-1).to(torch.float64) for t in spec.vector_tensors]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)

    def state_dict(self, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """The base's tensors (all, or ``names``), read whole."""
        return {name: self.tensor(name) for name in (self.tensors if names is None else names)}

    def _paired(self, name: str, x: torch.Tensor, what: str) -> torch.Tensor:
        """The base tensor ``name`` on ``x``'s device, after checking the shapes match."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{what} {name!r} is a {type(x).__name__}, expected a tensor")
        self._need(name)
        shape = self.tensors[name][0]
        if tuple(x.shape) != shape:
            raise BaseMismatchError(f"{what} {name!r} has shape {tuple(x.shape)}, the base's is {shape}")
        if not x.is_floating_point():
            raise TypeError(f"{what} {name!r} is {x.dtype}; deltas are taken of floating tensors")
        return self.tensor(name).to(x.device)

    def delta(self, state: Mapping[str, torch.Tensor], *, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
        """``D = w - b`` of every tensor of ``state``, computed in float64 (see the module
        docstring for when it is exact), returned in ``dtype`` on ``w``'s device.

        Raises:
            BaseMismatchError: A tensor the base lacks or of another shape.
            FloatingPointError: ``w``, ``b`` or ``D`` holds NaN or Inf (named).
        """
        out: dict[str, torch.Tensor] = {}
        for name, w in state.items():
            b = self._paired(name, w, "tensor")
            d = w.detach().to(torch.float64) - b.to(torch.float64)
            if not torch.isfinite(d).all():
                raise FloatingPointError(f"the delta of tensor {name!r} holds NaN or Inf: the weights or the base are not finite")
            out[name] = d.to(dtype)
        return out

    def apply(self, delta: Mapping[str, torch.Tensor], *, dtypes: Mapping[str, torch.dtype] | None = None) -> dict[str, torch.Tensor]:
        """``b + D`` of every tensor of ``delta``, added in float64 and cast to the base
        tensor's dtype (or ``dtypes[name]``), on ``D``'s device.

        Raises:
            BaseMismatchError: A tensor the base lacks or of another shape.
            FloatingPointError: The sum holds NaN or Inf (named).
        """
        out: dict[str, torch.Tensor] = {}
        for name, d in delta.items():
            b = self._paired(name, d, "delta")
            dtype = (dtypes or {}).get(name, b.dtype)
            w = (b.to(torch.float64) + d.detach().to(torch.float64)).to(dtype)
            if not torch.isfinite(w).all():
                raise FloatingPointError(f"base + delta of tensor {name!r} holds NaN or Inf (in {dtype})")
            out[name] = w
        return out
