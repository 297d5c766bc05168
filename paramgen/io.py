"""Atomic file writes: a crash leaves the old file or the new one, never half of one.

- `atomic_path` / `write_json` / `save_safetensors`: one file, written under a temporary
  name beside its target and renamed into place.
- `atomic_folder`: a folder of several files (a PEFT adapter, a Hugging Face model),
  written under a temporary name beside its target and renamed into place whole.
- `file_sha256` and `json_sha256`: digests recorded beside saved files, so that loading
  can refuse corrupted or edited ones.

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
import shutil
import struct
import tempfile
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from safetensors.torch import save_file

__all__ = [
    "atomic_path",
    "atomic_folder",
    "fsync_dir",
    "write_json",
    "read_json",
    "read_json_object",
    "save_safetensors",
    "file_sha256",
    "json_sha256",
    "TMP_SUFFIX",
]

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
    """The JSON content of a file.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file is not valid JSON (names the file).
    """
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object of a file (a config: ``config.json``, ``adapter_config.json``, ...).

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file is not valid JSON, or holds another JSON value than an object.

    Examples:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "config.json"
        >>> _ = path.write_text("[1, 2]")
        >>> read_json_object(path)
        Traceback (most recent call last):
        ...
        ValueError: ...config.json must hold a JSON object, got a JSON list
    """
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got a JSON {type(data).__name__}")
    return data


@contextmanager
def atomic_folder(path: str | os.PathLike, *, replaces: Collection[str] = ()) -> Iterator[Path]:
    """Write a folder whole: yield a temporary folder beside ``path``, renamed to ``path`` on success.

    On any error inside the block (a full disk included) the temporary folder is removed
    and ``path`` is left as it was. An existing ``path`` must be an empty folder, or hold
    only files named in ``replaces`` (an earlier output of the same kind): it is then
    moved aside, the new folder renamed in, and the old one removed; a folder holding
    anything else is never touched.

    Args:
        path: The folder to write.
        replaces: Names of the files an existing folder may hold and still be replaced.

    Raises:
        FileExistsError: ``path`` exists and is a file, or a folder holding other entries.

    Examples:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "model"
        >>> with atomic_folder(target) as tmp:
        ...     _ = (tmp / "a.txt").write_text("a")
        >>> sorted(p.name for p in target.iterdir())
        ['a.txt']
        >>> with atomic_folder(target, replaces={"a.txt"}) as tmp:  # an earlier output: replaced whole
        ...     _ = (tmp / "a.txt").write_text("b")
        >>> (target / "a.txt").read_text()
        'b'
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not path.is_dir() or path.is_symlink():
            raise FileExistsError(f"{path} exists and is not a folder; a folder is written whole under a new name or in an empty folder")
        others = sorted(p.name for p in path.iterdir() if p.name not in replaces)
        if others:
            raise FileExistsError(
                f"{path} exists and is not an empty folder (it holds {others[:3]}); a folder is written whole into a new or empty one"
                + (f" (or one holding only {sorted(replaces)})" if replaces else "")
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", suffix=TMP_SUFFIX, dir=path.parent))
            os.replace(path, old)  # onto an empty folder: allowed by rename(2)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)  # put the old folder back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


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


def json_sha256(data: Any) -> str:
    """Hex SHA-256 digest of the canonical JSON of ``data`` (sorted keys, no spaces).

    The same content gives the same digest whatever the order of its keys or the layout of
    the file it was read from.

    Examples:
        >>> json_sha256({"a": 1, "b": [1, 2]}) == json_sha256({"b": [1, 2], "a": 1})
        True
    """
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
