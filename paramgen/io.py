"""Atomic file writes: a crash leaves the old file or the new one, never half of one.

Examples:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "x.json"
    >>> write_json(path, {"a": 1})
    >>> read_json(path)
    {'a': 1}
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from safetensors.torch import save_file

__all__ = ["atomic_path", "write_json", "read_json", "save_safetensors", "file_sha256", "TMP_SUFFIX"]

TMP_SUFFIX = ".tmp"


class atomic_path:
    """Context manager yielding a temporary path in the target's folder; renamed on success.

    Examples:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=self.path.name + ".", suffix=TMP_SUFFIX, dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (sorted keys off: order is meaningful in manifests)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Save tensors (contiguous, unshared) atomically as safetensors; the same tensors and
    metadata always give the same bytes.

    ``safetensors`` writes the metadata in the order of a Rust hash map, which changes from
    one call to the next; the header is rewritten with the metadata keys sorted (tensors
    are already sorted by dtype and name, and the file holds no timestamp).

    Examples:
        >>> import tempfile, pathlib, torch
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> for name, meta in (("a", {"seed": "0", "format": "pt"}), ("b", {"format": "pt", "seed": "0"})):
        ...     save_safetensors(folder / f"{name}.safetensors", {"w": torch.ones(2)}, metadata=meta)
        >>> (folder / "a.safetensors").read_bytes() == (folder / "b.safetensors").read_bytes()
        True
    """
    clean = {k: v.detach().contiguous().clone() if _shares(v, tensors) else v.detach().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=dict(metadata or {}))
        _sort_metadata(tmp)


def _sort_metadata(path: Path) -> None:
    """Rewrite a safetensors header in place with its ``__metadata__`` keys sorted.

    Only the order of keys changes, so the compact JSON keeps its length and the tensor
    data stays where it is; the header's padding (spaces) is kept.
    """
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        meta = header.get("__metadata__")
        if not meta or len(meta) < 2:
            return
        header["__metadata__"] = dict(sorted(meta.items()))
        blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(blob) > n:  # pragma: no cover - same keys and values in another order: never longer
            raise RuntimeError(f"{path}: the sorted safetensors header is longer than the written one")
        f.seek(8)
        f.write(blob + b" " * (n - len(blob)))


def _shares(t: torch.Tensor, tensors: Mapping[str, torch.Tensor]) -> bool:
    ptr = t.untyped_storage().data_ptr()
    return sum(1 for v in tensors.values() if v.untyped_storage().data_ptr() == ptr) > 1


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 digest of a file, read in 1 MiB blocks (safetensors has no checksum of its own).

    Examples:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
        >>> _ = path.write_bytes(b"abc")
        >>> file_sha256(path)[:16]
        'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
