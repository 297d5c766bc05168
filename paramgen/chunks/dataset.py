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

    An item is a dict:

    - ``values``: ``(K,)`` chunk values in ``layout.dtype`` (float32, or float64 for
      float64 models), zero past the tensor's end;
    - ``mask``: ``(K,)`` bool, ``True`` on real values;
    - ``chunk`` (global chunk id), ``chunk_in_tensor``, ``tensor``, ``type``, ``block``:
      ints from the layout (the condition of the sample);
    - ``checkpoint``: index of the checkpoint in ``checkpoints``.

    Args:
        layout: Which tensors and how they are cut.
        checkpoints: A safetensors path or a sequence of them.
        strict: Reject files holding tensors the spec does not name (another, deeper
            architecture). ``False`` ignores them (e.g. a file with a legacy
            ``position_ids`` buffer that the module spec lacks).
        max_open_files: Handles kept open per process.
        reader: ``"pread"`` or ``"safetensors"`` (see above).

    Raises:
        SpecMismatchError: A checkpoint's tensors differ from the spec (names the file
            and the tensor).
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
    """

    def __init__(
        self,
        layout: ChunkLayout,
        checkpoints: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        strict: bool = True,
        max_open_files: int = 32,
        reader: Literal["pread", "safetensors"] = "pread",
    ) -> None:
        if isinstance(checkpoints, (str, os.PathLike)):
            checkpoints = [checkpoints]
        if len(checkpoints) == 0:
            raise ValueError("ChunkDataset: expected at least one checkpoint, got none")
        if max_open_files < 1:
            raise ValueError(f"ChunkDataset: max_open_files must be >= 1, got {max_open_files}")
        if reader not in ("pread", "safetensors"):
            raise ValueError(f"ChunkDataset: reader must be 'pread' or 'safetensors', got {reader!r}")
        if reader == "pread" and sys.byteorder != "little":  # pragma: no cover - safetensors data is little-endian
            raise ValueError("ChunkDataset: reader='pread' needs a little-endian machine; use reader='safetensors'")
        self.layout = layout
        self.reader: Literal["pread", "safetensors", "memory"] = reader
        self.max_open_files = int(max_open_files)
        self.paths: list[Path] | None = [Path(p) for p in checkpoints]
        self._memory: list[dict[str, torch.Tensor]] | None = None
        self._starts: list[list[int]] = []  # per checkpoint: byte offset of each layout tensor's data
        for path in self.paths:
            if not path.is_file():
                raise ValueError(f"ChunkDataset: checkpoint {path} does not exist or is not a file")
            tensors = read_header(path).tensors
            found = {name: (e.shape, e.dtype_name) for name, e in tensors.items()}
            _check_tensors(f"checkpoint {path}", layout, found, strict=strict)
            self._starts.append([tensors[t.name].start for t in layout.tensors])
        self._handles: OrderedDict[int, Any] = OrderedDict()
        self._pid = os.getpid()

    @classmethod
    def from_state_dicts(
        cls, layout: ChunkLayout, state_dicts: StateDictLike | Sequence[StateDictLike], *, strict: bool = False
    ) -> ChunkDataset:
        """Chunks of in-memory state dicts or modules (small models).

        Tensors are referenced, not copied (``detach``); ``strict`` as in the constructor
        (off by default: a state dict often carries buffers a sub-spec leaves out).
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
        self.layout = layout
        self.max_open_files = 1
        self.reader = "memory"
        self.paths = None
        self._starts = []
        self._memory = memory
        self._handles = OrderedDict()
        self._pid = os.getpid()
        return self

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

    def _handle(self, index: int) -> Any:
        """An open file descriptor (``"pread"``) or ``safe_open`` handle for checkpoint ``index``."""
        if os.getpid() != self._pid:  # a forked worker: leave the parent's handles to the parent
            self._handles = OrderedDict()
            self._pid = os.getpid()
        handle = self._handles.get(index)
        if handle is not None:
            self._handles.move_to_end(index)
            return handle
        assert self.paths is not None
        path = self.paths[index]
        if self.reader == "pread":
            try:
                handle = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError as e:
                raise ValueError(f"ChunkDataset: cannot read checkpoint {path}: {e}") from e
        else:
            from safetensors import SafetensorError, safe_open

            try:
                handle = safe_open(str(path), framework="pt")
            except (SafetensorError, OSError) as e:
                raise ValueError(f"ChunkDataset: cannot read checkpoint {path}: {e}") from e
        self._handles[index] = handle
        while len(self._handles) > self.max_open_files:
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
    def read(self, checkpoint: int, chunk: int) -> torch.Tensor:
        """The real values of one chunk, ``(length,)`` in its tensor's dtype."""
        layout = self.layout
        i = int(layout.tensor_ids[chunk])
        t = layout.tensors[i]
        start = int(layout.offsets[chunk])
        stop = start + int(layout.lengths[chunk])
        if self._memory is not None:
            return self._memory[checkpoint][t.name][start:stop]
        assert self.paths is not None
        path = self.paths[checkpoint]
        handle = self._handle(checkpoint)
        if self.reader == "pread":
            size = t.torch_dtype.itemsize
            buf = torch.empty((stop - start) * size, dtype=torch.uint8)  # the chunk's bytes, nothing more
            _pread_into(handle, memoryview(buf.numpy()), self._starts[checkpoint][i] + start * size, path)  # type: ignore[arg-type]  # ndarray has the buffer protocol; numpy declares __buffer__ only for Python >= 3.12
            return buf.view(t.torch_dtype)
        try:
            piece = handle.get_slice(t.name)
            if not t.shape:
                return piece[...].reshape(1)
            parts = [piece[idx].reshape(-1) for idx in _flat_slices(t.shape, start, stop)]
        except Exception as e:  # safetensors raises its own error types from Rust
            raise ValueError(f"ChunkDataset: cannot read {t.name!r} from checkpoint {path}: {e}") from e
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = self.layout.num_chunks
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"ChunkDataset index must be in [0, {len(self)}), got {index}")
        checkpoint, chunk = divmod(index, n)
        layout = self.layout
        real = self.read(checkpoint, chunk)
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
