"""PEFT adapter folders: ``adapter_model.safetensors`` beside ``adapter_config.json``.

The folder ``peft.PeftModel.from_pretrained(base, folder)`` loads. Reading and writing it
needs neither ``peft`` nor ``transformers``:

- `read_adapter` / `read_adapter_config`: the tensors (named as PEFT loads them, without
  the adapter's name that older PEFT versions saved) and the config, with errors that
  name the folder and the missing file.
- `write_adapter`: tensors and config in memory, written whole (`paramgen.io.atomic_folder`).
- `stream_adapter`: the weights streamed tensor by tensor (`SafetensorsStreamWriter`),
  then the config; the folder appears only when both are complete.
- `find_head`: the classification head PEFT saves with a sequence-classification
  adapter (``modules_to_save``), one row per label.

What an adapter *means* (which base model, rank, layers) is the business of its user, for
instance `paramgen.lora`, which checks a folder against its `LoRASetup`.

Examples:
    >>> import tempfile, torch
    >>> folder = write_adapter(tempfile.mkdtemp() + "/ad", {"base_model.model.classifier.weight": torch.ones(2, 3)},
    ...                        {"peft_type": "LORA", "r": 2, "target_modules": {"value", "query"}})
    >>> tensors, config = read_adapter(folder)
    >>> list(tensors), config["target_modules"]
    (['base_model.model.classifier.weight'], ['query', 'value'])
    >>> find_head({k: v.shape for k, v in tensors.items()})
    ('base_model.model.classifier.weight', None)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from paramgen.formats._common import json_mapping, stream_folder
from paramgen.formats.safetensors import SafetensorsStreamWriter, read_tensors
from paramgen.io import atomic_folder, read_json_object, save_safetensors, write_json
from paramgen.spec import TensorSpec

__all__ = [
    "ADAPTER_WEIGHTS",
    "ADAPTER_CONFIG",
    "HEAD_PREFIX",
    "HEAD_MODULES",
    "adapter_config_dict",
    "is_adapter_folder",
    "read_adapter_config",
    "read_adapter",
    "write_adapter",
    "stream_adapter",
    "find_head",
    "plain_name",
]

#: The two files of a PEFT adapter folder.
ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"
#: Where PEFT saves the modules of the wrapped model (``base_model.model.<module>...``).
HEAD_PREFIX = "base_model.model."
#: The heads PEFT's sequence-classification models add to ``modules_to_save``.
HEAD_MODULES = ("classifier", "score")


def adapter_config_dict(config: Any) -> dict[str, Any]:
    """A PEFT config (a ``peft.PeftConfig`` or the mapping of an ``adapter_config.json``) as JSON data.

    Raises:
        TypeError: Not a mapping of strings, or not JSON-serializable.
        ValueError: No ``peft_type`` (PEFT cannot load a folder without it).

    Examples:
        >>> adapter_config_dict({"peft_type": "LORA", "target_modules": {"value", "query"}})
        {'peft_type': 'LORA', 'target_modules': ['query', 'value']}
    """
    if hasattr(config, "to_dict") and not isinstance(config, Mapping):
        config = config.to_dict()
    if not isinstance(config, Mapping) or not all(isinstance(k, str) for k in config):
        raise TypeError(f"adapter_config must be a peft config or a mapping of strings (an adapter_config.json), got {type(config).__name__}")
    data = json_mapping(config, "adapter_config")
    if not data.get("peft_type"):
        raise ValueError("adapter_config has no 'peft_type' (e.g. 'LORA'); PEFT cannot load a folder without it")
    return data


def is_adapter_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding ``adapter_model.safetensors``."""
    return (Path(path) / ADAPTER_WEIGHTS).is_file()


def plain_name(name: str) -> str:
    """A tensor name as PEFT loads it: without the adapter's name, which older PEFT versions saved.

    Examples:
        >>> plain_name("base_model.model.classifier.modules_to_save.default.weight")
        'base_model.model.classifier.weight'
    """
    return name.replace(".modules_to_save.default.", ".").replace(".default.", ".")


def _files(folder: Path, names: Sequence[str]) -> None:
    for name in names:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not a PEFT adapter folder: {name} is missing")


def read_adapter_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``adapter_config.json`` of an adapter folder, as it is written.

    Raises:
        FileNotFoundError: The folder has no ``adapter_config.json``.
        ValueError: The file is not JSON or not a JSON object (names the file).
    """
    folder = Path(folder)
    _files(folder, (ADAPTER_CONFIG,))
    return read_json_object(folder / ADAPTER_CONFIG)


def read_adapter(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the config of a PEFT adapter folder.

    Tensors are named as PEFT loads them (`plain_name`), in the file's order.

    Returns:
        ``(tensors, config)``.

    Raises:
        FileNotFoundError: Either file is missing (both are checked before anything is read).
        ValueError: A config that is not a JSON object, or unreadable weights (names the file).

    Examples:
        >>> import tempfile
        >>> read_adapter(tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        FileNotFoundError: ... is not a PEFT adapter folder: adapter_config.json is missing
    """
    folder = Path(folder)
    _files(folder, (ADAPTER_CONFIG, ADAPTER_WEIGHTS))
    config = read_json_object(folder / ADAPTER_CONFIG)
    tensors = {plain_name(k): v for k, v in read_tensors(folder / ADAPTER_WEIGHTS).items()}
    return tensors, config


def write_adapter(folder: str | os.PathLike, tensors: Mapping[str, torch.Tensor], adapter_config: Any) -> Path:
    """Write an adapter folder whole: ``adapter_model.safetensors`` and ``adapter_config.json``.

    Both files are written in a temporary folder beside ``folder`` and renamed into place
    together: on any error nothing is left. An existing adapter folder (holding only these
    two files) is replaced whole; any other non-empty ``folder`` is refused.

    Args:
        folder: The adapter folder.
        tensors: Tensors by adapter-file name, written as given (contiguous copies).
        adapter_config: A ``peft.PeftConfig`` or an ``adapter_config.json`` mapping (it
            must name its ``peft_type``).

    Returns:
        ``folder``.

    Raises:
        FileExistsError: ``folder`` holds other files than an adapter's.
        TypeError, ValueError: A config that is not JSON data or names no ``peft_type``.
    """
    config = adapter_config_dict(adapter_config)
    folder = Path(folder)
    with atomic_folder(folder, replaces=(ADAPTER_WEIGHTS, ADAPTER_CONFIG)) as tmp:
        save_safetensors(tmp / ADAPTER_WEIGHTS, tensors, metadata={"format": "pt"})
        write_json(tmp / ADAPTER_CONFIG, config)
    return folder


@contextmanager
def stream_adapter(
    folder: str | os.PathLike,
    tensors: Iterable[TensorSpec],
    adapter_config: Any,
    *,
    extras: Mapping[str, torch.Tensor] | None = None,
    check_finite: bool = True,
) -> Iterator[SafetensorsStreamWriter]:
    """Stream an adapter folder: yields the `SafetensorsStreamWriter` of its weights.

    ``adapter_config.json`` is written after the weights are complete, and the folder,
    built under a temporary name beside ``folder``, is renamed into place only then: on
    any error (a full disk included) nothing is left, and an existing ``folder`` is never
    half-replaced.

    Args:
        folder: The adapter folder; it must not exist or be empty.
        tensors: The tensors to stream (their names are the adapter file's).
        adapter_config: A ``peft.PeftConfig`` or an ``adapter_config.json`` mapping.
        extras: Tensors stored as given (e.g. a frozen classifier head).
        check_finite: Raise on NaN/Inf in streamed values.

    Raises:
        FileExistsError: ``folder`` exists and is not an empty folder.
        TypeError, ValueError: A config that is not JSON data or names no ``peft_type``.

    Examples:
        >>> import tempfile, torch
        >>> from paramgen.spec import ParamSpec
        >>> spec = ParamSpec.from_state_dict({"lora_A.weight": torch.zeros(2, 3)})
        >>> folder = Path(tempfile.mkdtemp()) / "ad"
        >>> with stream_adapter(folder, spec.vector_tensors, {"peft_type": "LORA"}) as w:
        ...     w.write_tensor("lora_A.weight", torch.ones(2, 3))
        >>> sorted(p.name for p in folder.iterdir())
        ['adapter_config.json', 'adapter_model.safetensors']
    """
    config = adapter_config_dict(adapter_config)
    with stream_folder(folder, ADAPTER_WEIGHTS, ADAPTER_CONFIG, config, tensors, extras=extras, check_finite=check_finite, replaces=()) as writer:
        yield writer


def find_head(shapes: Mapping[str, Sequence[int]]) -> tuple[str, str | None] | None:
    """The classification head of a PEFT sequence-classification adapter, from its tensors' shapes.

    PEFT saves the head (``modules_to_save``: ``classifier``, or ``score`` for decoder
    models) as ``base_model.model.<head>.weight``, one row per label, and its bias if any.

    Args:
        shapes: Tensor name -> shape, e.g. of an ``adapter_model.safetensors``.

    Returns:
        ``(weight name, bias name or None)``, or ``None`` when there is no such head.

    Examples:
        >>> find_head({"base_model.model.classifier.weight": (2, 384), "base_model.model.classifier.bias": (2,)})
        ('base_model.model.classifier.weight', 'base_model.model.classifier.bias')
    """
    for module in HEAD_MODULES:
        weight, bias = f"{HEAD_PREFIX}{module}.weight", f"{HEAD_PREFIX}{module}.bias"
        if weight in shapes and len(shapes[weight]) == 2:
            rows = shapes[weight][0]
            return weight, bias if bias in shapes and tuple(shapes[bias]) == (rows,) else None
    return None
