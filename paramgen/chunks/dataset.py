"""Chunks of checkpoints read lazily from safetensors files (or served from state dicts).

`ChunkDataset` serves ``(checkpoint, chunk)`` samples of a `paramgen.chunks.ChunkLayout`,
reading only each chunk's bytes (a chunk is one contiguous byte range of the file), so a
zoo of large models never sits in memory. `spec_from_safetensors` describes a checkpoint
from its header without loading its floating tensors.

Examples:
    >>> import tempfile, torch
    >>> from safetensors.torch import save_file
    >>> from paramgen.chunks import ChunkLayout
    >>> path = tempfile.mkdtemp() + "/m.safetensors"
    >>> save_file({"w": torch.arange(6.0)}, path)
    >>> data = ChunkDataset(ChunkLayout(spec_from_safetensors(path), 4), path)
    >>> len(data), data[1]["values"].tolist()
    (2, [4.0, 5.0, 0.0, 0.0])
"""

from __future__ import annotations

import os
import sys
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from paramgen.chunks.layout import ChunkLayout
from paramgen.formats.safetensors import read_header
from paramgen.spec import ParamSpec, SpecMismatchError

__all__ = ["ChunkDataset", "spec_from_safetensors"]

# --------------------------------------------------------------------------- safetensors headers
def spec_from_safetensors(
    path: str | os.PathLike, *, include: Sequence[str] | None = None, exclude: Sequence[str] = ()
) -> ParamSpec:
    """Describe a safetensors checkpoint from its header, without loading its weights.

    Tensors come in file order (by data offset). Floating tensors are described from the
    header alone; non-floating ones (``position_ids``, ``num_batches_tracked``: usually
    tiny) are read, because `ParamSpec` records their values as defaults. safetensors
    files hold no ties, so the spec has none. ``include``/``exclude`` are
    `ParamSpec.from_state_dict`'s glob filters.

    Examples:
        >>> import tempfile, torch
        >>> from safetensors.torch import save_file
        >>> path = tempfile.mkdtemp() + "/m.safetensors"
        >>> save_file({"w": torch.zeros(3, 2), "n": torch.tensor(7)}, path)
        >>> spec = spec_from_safetensors(path)
        >>> [(t.name, t.shape, t.dtype, t.role) for t in spec.tensors]
        [('n', (), 'int64', 'extra'), ('w', (3, 2), 'float32', 'vector')]
    """
    path = Path(path)
    entries = sorted(read_header(path).tensors.values(), key=lambda e: (e.start, e.stop))
    try:
        dtypes = {entry.name: entry.dtype for entry in entries}
    except TypeError as err:
        raise TypeError(f"{path}: {err}") from None
    state: dict[str, torch.Tensor] = {}
    small = [name for name, dtype in dtypes.items() if not dtype.is_floating_point]
    values = {}
    if small:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                values = {name: f.get_tensor(name) for name in small}
        except SafetensorError as err:
            raise ValueError(f"{path}: not a readable safetensors file: {err}") from err
    for entry in entries:
        state[entry.name] = values[entry.name] if entry.name in values else torch.empty(entry.shape, dtype=dtypes[entry.name], device="meta")
    return ParamSpec.from_state_dict(state, include=include, exclude=exclude)


def _check_tensors(
    where: str, layout: ChunkLayout, found: Mapping[str, tuple[tuple[int, ...], str]], *, strict: bool
) -> None:
    """Raise `SpecMismatchError` naming ``where`` and the first tensor unlike the layout's spec."""
    for t in layout.tensors:
        if t.name not in found:
            raise SpecMismatchError(
                f"{where} is not a checkpoint of this architecture: it lacks tensor {t.name!r} "
                f"(it has {len(found)} tensors, e.g. {list(found)[:3]})"
            )
        shape, dtype = found[t.name]
        if (tuple(shape), dtype) != (t.shape, t.dtype):
            raise SpecMismatchError(
                f"{where} is not a checkpoint of this architecture: tensor {t.name!r} is {tuple(shape)} {dtype}, "
                f"expected {t.shape} {t.dtype}"
            )
    if strict:
        known = set(layout.spec.names)
        unexpected = [name for name in found if name not in known]
        if unexpected:
            raise SpecMismatchError(
                f"{where} is not a checkpoint of this architecture: unexpected tensor {unexpected[0]!r} "
                f"({len(unexpected)} not in the spec); pass strict=False to ignore tensors the spec lacks"
            )


# --------------------------------------------------------------------------- dataset
def _flat_slices(shape: tuple[int, ...], start: int, stop: int) -> Iterator[tuple[slice, ...]]:
    """Index tuples whose selections, flattened and concatenated, are ``flat[start:stop]``.

    At most ``2 * ndim - 1`` boxes, so a chunk of a big matrix reads only its own bytes.
    """
    if len(shape) == 1:
        yield (slice(start, stop),)
        return
    inner = 1
    for s in shape[1:]:
        inner *= s
    r0, o0 = divmod(start, inner)
    r1, o1 = divmod(stop, inner)
    if r0 == r1:  # inside one row
        for rest in _flat_slices(shape[1:], o0, o1):
            yield (slice(r0, r0 + 1), *rest)
        return
    if o0:
        for rest in _flat_slices(shape[1:], o0, inner):
            yield (slice(r0, r0 + 1), *rest)
        r0 += 1
    if r1 > r0:
        yield (slice(r0, r1),)
    if o1:
        for rest in _flat_slices(shape[1:], 0, o1):
            yield (slice(r1, r1 + 1), *rest)


StateDictLike = Mapping[str, torch.Tensor] | nn.Module
BaseLike = Any  # a safetensors path, a state dict, a module or a paramgen.base.PinnedBase


class ChunkDataset(Dataset):
    """Chunks of one or many checkpoints, read lazily: item ``i`` is chunk ``i % N`` of checkpoint ``i // N``.

    An item reads only its chunk's bytes, so neither a ``(checkpoints, D)`` matrix nor
    a whole model is ever built. Every file's header is checked against the layout's
    spec up front (names, shapes, dtypes; cheap), so a checkpoint of another
    architecture or a truncated file fails at construction with its name.

    Two readers, same values:

    - ``"pread"`` (default): a chunk of a tensor is one contiguous byte range of the
      file, read with ``os.preadv`` into the chunk's buffer. The process's resident
      memory grows by the chunk only.
    - ``"safetensors"``: ``safe_open(...).get_slice`` on the memory-mapped file. Also
      reads only the chunk, but every page it touches (and the kernel maps around
      faults, up to whole large folios) counts as the process's resident memory: sampling
      256 random chunks of a 400 MB file raised peak RSS by about 260 MB here, against
      a few MB with ``"pread"``.

    File handles are opened lazily, per process, and at most ``max_open_files`` at a
    time (least recently used closed first); pickling drops them and a forked worker
    opens its own, so the dataset is safe with ``DataLoader(num_workers > 0)``.

    With a ``base`` (`paramgen.base.PinnedBase`, or what `paramgen.base.PinnedBase.of`
    takes), items serve the chunks of the deltas ``D = w - w_base``: the base's chunk is
    read the same way (lazily from its file, or from its state dict), subtracted in
    float64 and the result cast to ``layout.dtype``. The base must hold every layout
    tensor with the same shape. Statistics fitted on the items (`paramgen.normalize.ChunkStats`)
    are then statistics of ``D``.

    An item is a dict:

    - ``values``: ``(K,)`` chunk values (of ``D`` with a base) in ``layout.dtype``
      (float32, or float64 for float64 models), zero past the tensor's end;
    - ``mask``: ``(K,)`` bool, ``True`` on real values;
    - ``chunk`` (global chunk id, also the ``position`` a positional tokenizer is
      given by `paramgen.chunkwise.ChunkSamples`), ``chunk_in_tensor``, ``tensor``,
      ``type``, ``block``: ints from the layout (the condition of the sample);
    - ``checkpoint``: index of the checkpoint in ``checkpoints``.

    Args:
        layout: Which tensors and how they are cut.
        checkpoints: A safetensors path, a sequence of them, or a `paramgen.zoo.Zoo`
            (see `from_zoo`).
        base: The pinned base (see above), or ``None`` for the weights themselves.
        strict: Reject files holding tensors the spec does not name (another, deeper
            architecture). ``False`` ignores them (e.g. a file with a legacy
            ``position_ids`` buffer that the module spec lacks).
        max_open_files: Handles kept open per process.
        reader: ``"pread"`` or ``"safetensors"`` (see above).

    Attributes:
        base: The `paramgen.base.PinnedBase`, or ``None``.

    Raises:
        SpecMismatchError: A checkpoint's tensors differ from the spec (names the file
            and the tensor).
        paramgen.base.BaseMismatchError: The base lacks a layout tensor or holds it in
            another shape (named).
        ValueError: A file is missing, truncated or not safetensors (names the file).

    Examples:
        >>> import tempfile, torch
        >>> from safetensors.torch import save_file
        >>> path = tempfile.mkdtemp() + "/m.safetensors"
        >>> save_file({"w": torch.arange(10.0).reshape(2, 5)}, path)
        >>> layout = ChunkLayout(spec_from_safetensors(path), 4)
        >>> data = ChunkDataset(layout, [path, path])
        >>> len(data), data[2]["values"].tolist(), data[5]["checkpoint"]
        (6, [8.0, 9.0, 0.0, 0.0], 1)
        >>> deltas = ChunkDataset(layout, path, base={"w": torch.ones(2, 5)})
        >>> deltas[2]["values"].tolist()
        [7.0, 8.0, 0.0, 0.0]
    """

    paths: list[Path] | None  # per checkpoint, for files and zoos; None in memory

    def __init__(
        self,
        layout: ChunkLayout,
        checkpoints: Any,
        *,
        base: BaseLike = None,
        strict: bool = True,
        max_open_files: int = 32,
        reader: Literal["pread", "safetensors"] = "pread",
    ) -> None:
        zoo = _as_zoo(checkpoints)
        if zoo is not None:
            entries, strict = _zoo_entries(zoo, base), False  # run files hold the stored tensors only
        else:
            if isinstance(checkpoints, (str, os.PathLike)):
                checkpoints = [checkpoints]
            entries = [(Path(p), None) for p in checkpoints]
        if len(entries) == 0:
            raise ValueError("ChunkDataset: expected at least one checkpoint, got none")
        if max_open_files < 1:
            raise ValueError(f"ChunkDataset: max_open_files must be >= 1, got {max_open_files}")
        if reader not in ("pread", "safetensors"):
            raise ValueError(f"ChunkDataset: reader must be 'pread' or 'safetensors', got {reader!r}")
        if reader == "pread" and sys.byteorder != "little":  # pragma: no cover - safetensors data is little-endian
            raise ValueError("ChunkDataset: reader='pread' needs a little-endian machine; use reader='safetensors'")
        self._init(layout, reader, max_open_files)
        self.paths = [path for path, _ in entries]  # per checkpoint (a zoo run's file for each of its rows)
        files: dict[Path, int] = {}
        for path, row in entries:
            if path not in files:
                stacked = row is not None
                where = f"zoo run file {path}" if stacked else f"checkpoint {path}"
                if not path.is_file():
                    raise ValueError(f"ChunkDataset: {where} does not exist or is not a file")
                tensors = read_header(path).tensors
                found = {name: (e.shape[1:] if stacked else e.shape, e.dtype_name) for name, e in tensors.items()}
                _check_tensors(where, layout, found, strict=strict)
                files[path] = len(self._files)
                self._files.append(path)
                self._starts.append([tensors[t.name].start for t in layout.tensors])
                self._dtypes.append([t.torch_dtype for t in layout.tensors])
                self._stacked.append(stacked)
                self._file_rows.append(min(tensors[t.name].shape[0] for t in layout.tensors) if stacked and layout.tensors else 0)
            f = files[path]
            if row is not None and row >= self._file_rows[f]:
                raise ValueError(f"ChunkDataset: zoo run file {path} has {self._file_rows[f]} rows, a checkpoint is recorded at row {row}")
            self._file_of.append(f)
            self._row_of.append(row or 0)
        self._set_base(base)

    def _init(self, layout: ChunkLayout, reader: Literal["pread", "safetensors", "memory"], max_open_files: int) -> None:
        self.layout = layout
        self.reader: Literal["pread", "safetensors", "memory"] = reader
        self.max_open_files = int(max_open_files)
        self.paths = None
        self._memory: list[dict[str, torch.Tensor]] | None = None
        # Files read (checkpoints, then a base file): per file, byte offset and dtype of
        # each layout tensor's data, whether it stacks checkpoints in rows (a zoo run).
        self._files: list[Path] = []
        self._starts: list[list[int]] = []
        self._dtypes: list[list[torch.dtype]] = []
        self._stacked: list[bool] = []
        self._file_rows: list[int] = []
        self._file_of: list[int] = []  # per checkpoint: its file
        self._row_of: list[int] = []  # per checkpoint: its row in a stacked file (0 otherwise)
        self.base: Any = None
        self._base_file: int | None = None
        self._base_memory: dict[str, torch.Tensor] | None = None
        self._handles: OrderedDict[int, Any] = OrderedDict()
        self._pid = os.getpid()

    def _set_base(self, base: BaseLike) -> None:
        """Pin ``base``: check that it covers the layout, and set up reading its chunks."""
        if base is None:
            return
        from paramgen.base import PinnedBase

        pinned = PinnedBase.of(base)
        pinned.check_covers(self.layout, what="the chunk layout")
        self.base = pinned
        if pinned.path is None:
            self._base_memory = {t.name: pinned.tensor(t.name).detach().reshape(-1) for t in self.layout.tensors}
            return
        tensors = read_header(pinned.path).tensors
        self._base_file = len(self._files)
        self._files.append(pinned.path)
        self._starts.append([tensors[t.name].start for t in self.layout.tensors])
        self._dtypes.append([tensors[t.name].dtype for t in self.layout.tensors])
        self._stacked.append(False)
        self._file_rows.append(0)

    @classmethod
    def from_state_dicts(
        cls, layout: ChunkLayout, state_dicts: StateDictLike | Sequence[StateDictLike], *, base: BaseLike = None, strict: bool = False
    ) -> ChunkDataset:
        """Chunks of in-memory state dicts or modules (small models).

        Tensors are referenced, not copied (``detach``); ``strict`` as in the constructor
        (off by default: a state dict often carries buffers a sub-spec leaves out);
        ``base`` as in the constructor.
        """
        if isinstance(state_dicts, (Mapping, nn.Module)):
            state_dicts = [state_dicts]
        if len(state_dicts) == 0:
            raise ValueError("ChunkDataset: expected at least one state dict, got none")
        memory = []
        for i, sd in enumerate(state_dicts):
            if isinstance(sd, nn.Module):
                sd = sd.state_dict()
            found = {}
            for name, x in sd.items():
                if not isinstance(x, torch.Tensor):
                    raise TypeError(f"state dict {i}: entry {name!r} is a {type(x).__name__}, expected a tensor")
                found[name] = (tuple(x.shape), str(x.dtype).removeprefix("torch."))
            _check_tensors(f"state dict {i}", layout, found, strict=strict)
            memory.append({t.name: sd[t.name].detach().reshape(-1) for t in layout.tensors})
        self = cls.__new__(cls)
        self._init(layout, "memory", 1)
        self._memory = memory
        self._set_base(base)
        return self

    @classmethod
    def from_zoo(
        cls, layout: ChunkLayout, zoo: Any, *, base: BaseLike = None, absolute: bool = False, max_open_files: int = 32, reader: Literal["pread", "safetensors"] = "pread"
    ) -> ChunkDataset:
        """Chunks of every checkpoint of a `paramgen.zoo.Zoo` view, read lazily from its run files.

        A run file stores ``name -> (rows, *shape)``; a checkpoint is one row, and a chunk
        of it one byte range, as for a plain file. When the zoo records a base
        (`paramgen.zoo.Zoo.base`), ``base`` is required and checked against the record.
        ``absolute=True`` serves a base-pinned zoo's weights as they are, not as deltas
        (e.g. to measure what a generator of absolute weights keeps), and takes no ``base``.
        The run files' digests are not checked here (that reads every byte): call
        ``zoo.verify()`` first for that.

        Raises:
            paramgen.base.BaseMismatchError: The zoo records a base and ``base`` is
                missing (without ``absolute=True``) or another one.
            ValueError: ``absolute=True`` with a ``base``.
            SpecMismatchError: The zoo's tensors are not the layout's.

        Examples:
            >>> import tempfile, torch
            >>> from paramgen.chunks import ChunkLayout
            >>> from paramgen.spec import ParamSpec
            >>> from paramgen.zoo import ZooWriter
            >>> writer = ZooWriter(tempfile.mkdtemp())
            >>> for seed in range(2):
            ...     _ = writer.add({"w": torch.full((2, 3), float(seed))}, task="toy", run_id="run", epoch=seed)
            >>> layout = ChunkLayout(ParamSpec.from_state_dict({"w": torch.zeros(2, 3)}), 4)
            >>> data = ChunkDataset.from_zoo(layout, writer.zoo())
            >>> len(data), data[3]["values"].tolist()
            (4, [1.0, 1.0, 0.0, 0.0])
        """
        if _as_zoo(zoo) is None:
            raise TypeError(f"ChunkDataset.from_zoo takes a paramgen.zoo.Zoo, got {type(zoo).__name__}")
        if absolute:
            if base is not None:
                raise ValueError("ChunkDataset.from_zoo: absolute=True serves the weights themselves; it takes no base=")
            data = cls(layout, _AbsoluteView(zoo), max_open_files=max_open_files, reader=reader)
            return data
        return cls(layout, zoo, base=base, max_open_files=max_open_files, reader=reader)

    @property
    def num_checkpoints(self) -> int:
        return len(self.paths) if self.paths is not None else len(self._memory or ())

    def __len__(self) -> int:
        return self.num_checkpoints * self.layout.num_chunks

    # ------------------------------------------------------------------ handles
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()  # handles do not travel; each process opens its own
        return state

    def _file_reader(self) -> Literal["pread", "safetensors"]:
        return "pread" if self.reader == "memory" else self.reader

    def _handle(self, index: int) -> Any:
        """An open file descriptor (``"pread"``) or ``safe_open`` handle for file ``index``."""
        if os.getpid() != self._pid:  # a forked worker: leave the parent's handles to the parent
            self._handles = OrderedDict()
            self._pid = os.getpid()
        handle = self._handles.get(index)
        if handle is not None:
            self._handles.move_to_end(index)
            return handle
        path = self._files[index]
        if self._file_reader() == "pread":
            try:
                handle = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError as e:
                raise ValueError(f"ChunkDataset: cannot read {path}: {e}") from e
        else:
            from safetensors import SafetensorError, safe_open

            try:
                handle = safe_open(str(path), framework="pt")
            except (SafetensorError, OSError) as e:
                raise ValueError(f"ChunkDataset: cannot read {path}: {e}") from e
        self._handles[index] = handle
        while len(self._handles) > max(self.max_open_files, 1):
            _, old = self._handles.popitem(last=False)
            _release(old)
        return handle

    def close(self) -> None:
        """Close open files (they reopen on the next read)."""
        if os.getpid() == self._pid:
            for handle in self._handles.values():
                _release(handle)
        self._handles = OrderedDict()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    # ------------------------------------------------------------------ reading
    def _read_file(self, f: int, row: int, i: int, start: int, stop: int) -> torch.Tensor:
        """Values ``[start, stop)`` of layout tensor ``i``, flattened, from file ``f`` (row ``row`` of a stacked file)."""
        t = self.layout.tensors[i]
        dtype = self._dtypes[f][i]
        path = self._files[f]
        handle = self._handle(f)
        if self._file_reader() == "pread":
            size = dtype.itemsize
            buf = torch.empty((stop - start) * size, dtype=torch.uint8)  # the chunk's bytes, nothing more
            pos = self._starts[f][i] + (row * t.numel + start) * size
            _pread_into(handle, memoryview(buf.numpy()), pos, path)  # type: ignore[arg-type]  # ndarray has the buffer protocol; numpy declares __buffer__ only for Python >= 3.12
            return buf.view(dtype)
        lead: tuple[slice, ...] = (slice(row, row + 1),) if self._stacked[f] else ()
        try:
            piece = handle.get_slice(t.name)
            if not t.shape:
                return (piece[lead] if lead else piece[...]).reshape(1)
            parts = [piece[lead + idx].reshape(-1) for idx in _flat_slices(t.shape, start, stop)]
        except Exception as e:  # safetensors raises its own error types from Rust
            raise ValueError(f"ChunkDataset: cannot read {t.name!r} from {path}: {e}") from e
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _span(self, chunk: int) -> tuple[int, int, int]:
        """``(tensor index, start, stop)`` of a chunk within its flattened tensor."""
        layout = self.layout
        start = int(layout.offsets[chunk])
        return int(layout.tensor_ids[chunk]), start, start + int(layout.lengths[chunk])

    def read(self, checkpoint: int, chunk: int) -> torch.Tensor:
        """The real values of one chunk, ``(length,)`` in its tensor's dtype: the weights
        ``w`` (not the delta, with a base)."""
        i, start, stop = self._span(chunk)
        if self._memory is not None:
            return self._memory[checkpoint][self.layout.tensors[i].name][start:stop]
        return self._read_file(self._file_of[checkpoint], self._row_of[checkpoint], i, start, stop)

    def read_base(self, chunk: int) -> torch.Tensor:
        """The base's real values of one chunk, ``(length,)`` in the base tensor's dtype.

        Raises:
            ValueError: The dataset has no base.
        """
        i, start, stop = self._span(chunk)
        if self._base_memory is not None:
            return self._base_memory[self.layout.tensors[i].name][start:stop]
        if self._base_file is None:
            raise ValueError("ChunkDataset.read_base: this dataset has no base")
        return self._read_file(self._base_file, 0, i, start, stop)

    def state_dict(self, checkpoint: int) -> dict[str, torch.Tensor]:
        """The layout tensors of one checkpoint, whole, as weights ``w`` (not deltas), in their dtypes.

        Examples:
            >>> import torch
            >>> from paramgen.chunks import ChunkLayout
            >>> from paramgen.spec import ParamSpec
            >>> net = torch.nn.Linear(3, 2)
            >>> data = ChunkDataset.from_state_dicts(ChunkLayout(ParamSpec.from_module(net), 4), net)
            >>> torch.equal(data.state_dict(0)["weight"], net.weight)
            True
        """
        if not 0 <= checkpoint < self.num_checkpoints:
            raise IndexError(f"checkpoint must be in [0, {self.num_checkpoints}), got {checkpoint}")
        out = {}
        for i, t in enumerate(self.layout.tensors):
            if self._memory is not None:
                flat = self._memory[checkpoint][t.name].clone()
            else:
                flat = self._read_file(self._file_of[checkpoint], self._row_of[checkpoint], i, 0, t.numel)
            out[t.name] = flat.reshape(t.shape)
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = self.layout.num_chunks
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"ChunkDataset index must be in [0, {len(self)}), got {index}")
        checkpoint, chunk = divmod(index, n)
        layout = self.layout
        real = self.read(checkpoint, chunk)
        if self.base is not None:
            real = real.to(torch.float64) - self.read_base(chunk).to(torch.float64)  # D, exact in float64 (see paramgen.base)
            if not torch.isfinite(real).all():
                name = layout.tensors[int(layout.tensor_ids[chunk])].name
                raise FloatingPointError(f"ChunkDataset: the delta of checkpoint {checkpoint}, tensor {name!r} (chunk {chunk}) holds NaN or Inf")
        values = torch.zeros(layout.chunk_size, dtype=layout.dtype)  # (K,)
        values[: real.numel()] = real
        return {
            "values": values,
            "mask": torch.arange(layout.chunk_size) < real.numel(),  # (K,)
            "chunk": chunk,
            "chunk_in_tensor": int(layout.chunk_ids_in_tensor[chunk]),
            "tensor": int(layout.tensor_ids[chunk]),
            "type": int(layout.type_ids[chunk]),
            "block": int(layout.block_ids[chunk]),
            "checkpoint": checkpoint,
        }


def _as_zoo(obj: Any) -> Any:
    """``obj`` if it is a `paramgen.zoo.Zoo`, else ``None`` (imported lazily: zoos are optional here)."""
    if isinstance(obj, (str, os.PathLike, Sequence)):
        return None
    from paramgen.zoo.store import Zoo

    return obj if isinstance(obj, (Zoo, _AbsoluteView)) else None


class _AbsoluteView:
    """A zoo seen without its recorded base (`ChunkDataset.from_zoo` with ``absolute=True``)."""

    base = None

    def __init__(self, zoo: Any) -> None:
        self.zoo, self.root = zoo, zoo.root

    def __iter__(self) -> Any:
        return iter(self.zoo)


def _zoo_entries(zoo: Any, base: BaseLike) -> list[tuple[Path, int | None]]:
    """``(run file, row)`` of every checkpoint of a zoo view, after checking its recorded base."""
    record = zoo.base
    if record is not None:
        if base is None:
            raise _base_error()(
                f"zoo {zoo.root} records a base (sha256 {record['sha256']}): its checkpoints are read as deltas over it; pass base= (the base checkpoint)"
            )
        zoo.check_base(base)
    return [(zoo.root / "runs" / f"{c.run_id}.safetensors", c.index) for c in zoo]


def _base_error() -> type[ValueError]:
    from paramgen.base import BaseMismatchError

    return BaseMismatchError


def _release(handle: Any) -> None:
    if isinstance(handle, int):
        os.close(handle)
    # a safe_open handle unmaps its file when dropped


def _pread_into(fd: int, view: memoryview, pos: int, path: Path) -> None:
    """Fill ``view`` from ``fd`` at ``pos``; a short file raises naming ``path``."""
    got = 0
    while got < len(view):
        if hasattr(os, "preadv"):
            n = os.preadv(fd, [view[got:]], pos + got)
        else:  # pragma: no cover - platforms without preadv
            data = os.pread(fd, len(view) - got, pos + got)
            n = len(data)
            view[got : got + n] = data
        if n == 0:
            raise ValueError(
                f"ChunkDataset: checkpoint {path} ends before byte {pos + len(view)}; "
                "it was truncated or replaced after the dataset was built"
            )
        got += n
