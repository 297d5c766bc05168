"""safetensors files: the dtype table, headers read alone, whole reads and streamed writes.

- `DTYPES` maps safetensors' dtype codes (``"F32"``, ``"BF16"``, ...) to torch dtypes: the
  one table paramgen reads and writes files with (the dtypes `paramgen.spec.ParamSpec`
  supports).
- `read_header` reads a file's header only (names, dtypes, shapes, byte offsets,
  metadata), checking that the file is as long as its header says.
- `read_tensors` loads every tensor, with an error that names the file.
- `SafetensorsStreamWriter` writes a file piece by piece, at each tensor's offset, so a
  large model never sits in memory whole; the file appears under its name only once every
  byte is written.

Examples:
    >>> import tempfile, torch
    >>> from safetensors.torch import save_file
    >>> path = tempfile.mkdtemp() + "/m.safetensors"
    >>> save_file({"w": torch.zeros(3, 2, dtype=torch.bfloat16)}, path)
    >>> entry = read_header(path).tensors["w"]
    >>> entry.code, entry.shape, entry.dtype
    ('BF16', (3, 2), torch.bfloat16)
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

import attrs
import torch

from paramgen.io import TMP_SUFFIX, fsync_dir
from paramgen.spec import NonFiniteWeightsError, SpecMismatchError, TensorSpec

__all__ = ["DTYPES", "CODES", "TensorEntry", "SafetensorsHeader", "read_header", "read_tensors", "SafetensorsStreamWriter"]

#: safetensors dtype code -> torch dtype, for every dtype `paramgen.spec.ParamSpec` supports.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
#: torch dtype -> safetensors dtype code (`DTYPES` the other way round).
CODES: dict[torch.dtype, str] = {dtype: code for code, dtype in DTYPES.items()}

_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


# --------------------------------------------------------------------------- reading
@attrs.frozen
class TensorEntry:
    """One tensor of a safetensors header.

    Attributes:
        name: Its name in the file.
        code: Its safetensors dtype code (``"F32"``, ...), as written.
        shape: Its shape.
        start: Byte offset of its data in the file (from the file's start).
        stop: Byte offset just past its data.
    """

    name: str
    code: str
    shape: tuple[int, ...]
    start: int
    stop: int

    @property
    def dtype(self) -> torch.dtype:
        """Its torch dtype.

        Raises:
            TypeError: A dtype code paramgen does not read (e.g. ``F8_E4M3``).
        """
        if self.code not in DTYPES:
            raise TypeError(f"tensor {self.name!r} has dtype {self.code}, expected one of {sorted(DTYPES)}")
        return DTYPES[self.code]

    @property
    def dtype_name(self) -> str:
        """Its dtype as `paramgen.spec.TensorSpec` names it (``"float32"``), or the code if unknown."""
        return str(DTYPES[self.code]).removeprefix("torch.") if self.code in DTYPES else self.code


@attrs.frozen
class SafetensorsHeader:
    """What a safetensors file holds, read from its header alone (`read_header`).

    Attributes:
        path: The file.
        tensors: Name -> `TensorEntry`, in header order.
        metadata: The ``__metadata__`` strings (empty if none).
    """

    path: Path
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Read a safetensors file's header, without reading its tensors.

    Checks that the file is exactly as long as its header says, so a truncated or padded
    file fails here, with its name, rather than deep inside a reader.

    Raises:
        ValueError: The file cannot be read, is not safetensors, or is truncated or
            corrupt (names the file).

    Examples:
        >>> import tempfile, torch
        >>> from safetensors.torch import save_file
        >>> path = tempfile.mkdtemp() + "/m.safetensors"
        >>> save_file({"a": torch.zeros(2), "b": torch.zeros(3, dtype=torch.int64)}, path, metadata={"k": "v"})
        >>> header = read_header(path)
        >>> [(e.name, e.code, e.stop - e.start) for e in header.tensors.values()], header.metadata
        ([('b', 'I64', 24), ('a', 'F32', 8)], {'k': 'v'})
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{path}: not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                raise ValueError(f"{path}: not a safetensors file or truncated (header of {n} bytes, file of {size})")
            raw = f.read(n)
    except OSError as e:
        raise ValueError(f"{path}: cannot read safetensors file: {e}") from e
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a safetensors file (header is not JSON: {e})") from e
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + n
    tensors: dict[str, TensorEntry] = {}
    end = 0
    for name, info in header.items():
        try:
            start, stop = (int(x) for x in info["data_offsets"])
            tensors[name] = TensorEntry(name, str(info["dtype"]), tuple(int(s) for s in info["shape"]), base + start, base + stop)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: malformed safetensors header entry {name!r}: {info!r}") from e
        end = max(end, stop)
    data = size - base
    if data < end:
        raise ValueError(f"{path}: truncated safetensors file: its header describes {end} bytes of tensor data, the file holds {data}")
    if data > end:
        raise ValueError(f"{path}: corrupt safetensors file: {data - end} bytes past the last tensor")
    return SafetensorsHeader(path, tensors, dict(metadata))


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (``safetensors.torch.load_file``), on the CPU.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not a readable safetensors file (names the file).

    Examples:
        >>> import tempfile, torch
        >>> from safetensors.torch import save_file
        >>> path = tempfile.mkdtemp() + "/m.safetensors"
        >>> save_file({"w": torch.ones(2)}, path)
        >>> read_tensors(path)["w"].tolist()
        [1.0, 1.0]
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file")
    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from None


# --------------------------------------------------------------------------- writing
def _all_finite(x: torch.Tensor) -> bool:
    """No NaN/Inf in ``x``, without a mask as large as ``x`` in the common case.

    A NaN or an infinity makes the sum non-finite, so a finite sum proves every value
    finite; only a non-finite sum (or an overflow of huge finite values) needs the
    exact elementwise check.
    """
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def _as_bytes(x: torch.Tensor) -> memoryview:
    """Little-endian bytes of a CPU tensor, without a copy when it is contiguous."""
    return memoryview(x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]  # ndarray has the buffer protocol; numpy declares __buffer__ only for Python >= 3.12


def _reserve(fd: int, size: int) -> None:
    """Reserve disk space so that a full disk fails now, not after the generation work."""
    if not hasattr(os, "posix_fallocate") or size == 0:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        import errno

        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, getattr(errno, "ENOTSUP", -1)):
            raise


class SafetensorsStreamWriter:
    """A safetensors file written piece by piece, then renamed into place.

    The header is computed up front from the tensors to write (names, dtypes, shapes) and
    ``extras``; values then arrive as runs of a tensor's flattened values (`write`) or
    whole tensors (`write_tensor`), each cast to its tensor's dtype and written at its
    offset in a temporary file next to ``path``. Only the values being written are held
    in memory. The tensors of one name arrive in order (each run starts where the last
    one ended); different tensors in any order. Tensors are laid out in the file by
    decreasing item size (as ``safetensors`` does), so every tensor is aligned for
    zero-copy loaders.

    `close` checks that every value was written, fsyncs and renames atomically; any error
    before that (use it as a context manager) removes the temporary file. The file's space
    is reserved at open (``posix_fallocate`` where the filesystem has it), so a full disk
    usually fails before any generation work is spent.

    Args:
        path: Target file.
        tensors: The tensors to write (`paramgen.spec.TensorSpec`: name, shape, dtype), in
            the order they take in the header, e.g. ``spec.vector_tensors`` or a chunk
            layout's ``tensors``.
        extras: Further tensors stored as given (integer buffers such as
            ``num_batches_tracked``, or frozen tensors of a base model); written at open.
            Their names must not clash with ``tensors``.
        metadata: String metadata; ``{"format": "pt"}`` is always included (transformers
            expects it). Keys are written sorted, so the same content gives the same bytes.
        check_finite: Raise `paramgen.spec.NonFiniteWeightsError` on NaN/Inf in written values.

    Raises:
        OSError: The file cannot be written (full disk, permissions); nothing is left.

    Examples:
        >>> import tempfile, torch
        >>> from safetensors.torch import load_file
        >>> from paramgen.spec import ParamSpec
        >>> net = torch.nn.Linear(4, 2)
        >>> path = tempfile.mkdtemp() + "/net.safetensors"
        >>> with SafetensorsStreamWriter(path, ParamSpec.from_module(net).vector_tensors) as w:
        ...     w.write_tensor("bias", net.bias)
        ...     w.write("weight", net.weight.reshape(-1)[:5])  # a run of values, then the rest
        ...     w.write("weight", net.weight.reshape(-1)[5:], start=5)
        >>> torch.equal(load_file(path)["weight"], net.weight)
        True
    """

    def __init__(
        self,
        path: str | os.PathLike,
        tensors: Iterable[TensorSpec],
        *,
        extras: Mapping[str, torch.Tensor] | None = None,
        metadata: Mapping[str, str] | None = None,
        check_finite: bool = True,
    ) -> None:
        if sys.byteorder != "little":  # pragma: no cover - safetensors is little-endian
            raise RuntimeError("SafetensorsStreamWriter needs a little-endian machine")
        self.path = Path(path)
        self.tensors: tuple[TensorSpec, ...] = tuple(tensors) if isinstance(tensors, Iterable) else ()
        if not isinstance(tensors, Iterable) or not all(isinstance(t, TensorSpec) for t in self.tensors):
            raise TypeError(f"tensors must be TensorSpec records (e.g. spec.vector_tensors or a chunk layout's .tensors), got {type(tensors).__name__}")
        self.check_finite = check_finite
        self._index = {t.name: i for i, t in enumerate(self.tensors)}
        if len(self._index) != len(self.tensors):
            raise ValueError("tensors name the same tensor twice")
        extras = dict(extras or {})
        clash = [name for name in extras if name in self._index]
        if clash:
            raise ValueError(f"extras {clash[:3]} clash with the tensors to write")
        meta = {"format": "pt"}
        for k, v in (metadata or {}).items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"safetensors metadata must map strings to strings, got {k!r}: {v!r}")
            meta[k] = v
        entries: list[tuple[str, torch.dtype, tuple[int, ...]]] = [(t.name, t.torch_dtype, t.shape) for t in self.tensors]
        for name, x in extras.items():
            if not isinstance(x, torch.Tensor) or x.dtype not in CODES:
                raise TypeError(f"extra {name!r}: expected a tensor of dtype {sorted(map(str, CODES))}, got {x!r:.80}")
            entries.append((name, x.dtype, tuple(x.shape)))
        # Largest items first keeps every tensor aligned to its item size (the header is padded to 8).
        order = sorted(range(len(entries)), key=lambda i: -entries[i][1].itemsize)
        header: dict[str, object] = {"__metadata__": dict(sorted(meta.items()))}  # bytes independent of the mapping's order
        starts: dict[str, int] = {}
        pos = 0
        for i in order:
            name, dtype, shape = entries[i]
            n = dtype.itemsize
            for s in shape:
                n *= s
            header[name] = {"dtype": CODES[dtype], "shape": list(shape), "data_offsets": [pos, pos + n]}
            starts[name] = pos
            pos += n
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        base = 8 + len(blob)
        self.size = base + pos  # bytes of the finished file
        self._positions = [base + starts[t.name] for t in self.tensors]
        self._written = [0] * len(self.tensors)  # values written so far, per tensor
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=self.path.name + ".", suffix=TMP_SUFFIX, dir=self.path.parent)
        self._fd: int | None = fd
        self.tmp_path = Path(name)
        try:
            _reserve(fd, self.size)
            self._write_at(0, memoryview(struct.pack("<Q", len(blob)) + blob))
            for name_, x in extras.items():
                self._write_at(base + starts[name_], _as_bytes(x))
        except BaseException:
            self.abort()
            raise

    # ------------------------------------------------------------------ writing
    def _write_at(self, pos: int, data: memoryview) -> None:
        if self._fd is None:
            raise ValueError(f"writer for {self.path} is closed")
        while len(data):
            n = os.pwrite(self._fd, data, pos)
            if n <= 0:  # pragma: no cover - pwrite raises rather than returning 0 on a regular file
                raise OSError(f"short write to {self.tmp_path}")
            data = data[n:]
            pos += n

    def _tensor(self, name: str) -> int:
        if self._fd is None:
            raise ValueError(f"writer for {self.path} is closed")
        i = self._index.get(name)
        if i is None:
            raise KeyError(f"{name!r} is not a tensor of this file; it writes {len(self.tensors)} tensors, e.g. {list(self._index)[:3]}")
        return i

    def write(self, name: str, values: torch.Tensor, *, start: int = 0) -> None:
        """Write flat ``values`` into tensor ``name`` from its ``start``-th value on.

        A tensor's runs arrive in order: ``start`` is where the previous run of that tensor
        ended (0 for its first). Values are cast to the tensor's dtype (round to nearest
        even, as ``Tensor.to``).

        Raises:
            ValueError: ``start`` is not where the tensor's previous run ended, or the run
                goes past the tensor's end.
            TypeError: Values that are not floating point.
            NonFiniteWeightsError: NaN or Inf (with ``check_finite``).
        """
        i = self._tensor(name)
        t = self.tensors[i]
        if values.ndim != 1:
            raise SpecMismatchError(f"tensor {name!r}: write takes flat values (1-D), got shape {tuple(values.shape)}; use write_tensor for a whole tensor")
        if not values.is_floating_point():
            raise TypeError(f"tensor {name!r}: expected floating values, got {values.dtype}")
        if start != self._written[i]:
            raise ValueError(f"tensor {name!r}: values must arrive in order without gaps; expected a run from value {self._written[i]}, got one from {start}")
        if start + values.numel() > t.numel:
            raise ValueError(f"tensor {name!r} holds {t.numel} values; a run of {values.numel()} from value {start} goes past its end")
        if self.check_finite and not _all_finite(values):
            raise NonFiniteWeightsError(f"values of {name!r} contain NaN or Inf")
        self._write_at(self._positions[i] + start * t.torch_dtype.itemsize, _as_bytes(values.to(t.torch_dtype)))
        self._written[i] = start + values.numel()

    def write_tensor(self, name: str, tensor: torch.Tensor) -> None:
        """Write tensor ``name`` whole (cast to its dtype).

        Raises:
            SpecMismatchError: ``tensor`` has another shape than the tensor's.
            ValueError: Part of the tensor was written already.
        """
        i = self._tensor(name)
        t = self.tensors[i]
        if tuple(tensor.shape) != t.shape:
            raise SpecMismatchError(f"tensor {name!r}: expected shape {t.shape}, got {tuple(tensor.shape)}")
        if self._written[i]:
            raise ValueError(f"tensor {name!r} is written already ({self._written[i]} of {t.numel} values); write_tensor writes a tensor whole, once")
        self.write(name, tensor.reshape(-1))

    # ------------------------------------------------------------------ finishing
    def missing(self) -> list[tuple[str, int]]:
        """``(name, values not written yet)`` of every tensor not complete yet."""
        return [(t.name, t.numel - done) for t, done in zip(self.tensors, self._written, strict=True) if done < t.numel]

    def close(self) -> Path:
        """Check completeness, fsync, rename into place; returns ``path``.

        Raises:
            ValueError: Values are missing (the temporary file is removed).
        """
        if self._fd is None:
            raise ValueError(f"writer for {self.path} is closed")
        try:
            missing = self.missing()
            if missing:
                name, left = missing[0]
                raise ValueError(f"incomplete: {len(missing)} of {len(self.tensors)} tensors were not written whole, starting with {name!r} ({left} values missing)")
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            os.replace(self.tmp_path, self.path)
        except BaseException:
            self.abort()
            raise
        fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        """Close and remove the temporary file; ``path`` is left untouched."""
        if self._fd is not None:
            try:
                os.close(self._fd)
            finally:
                self._fd = None
        self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> SafetensorsStreamWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.abort()
        elif self._fd is not None:
            self.close()
