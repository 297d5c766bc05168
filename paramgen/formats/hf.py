"""Hugging Face model folders: ``model.safetensors`` (or its shards) beside ``config.json``.

The folder ``transformers.AutoModel.from_pretrained(folder)`` loads. Reading and writing
it needs no ``transformers``:

- `read_model`: the state dict (one file, or the shards a ``model.safetensors.index.json``
  names, in the index's order) and the config.
- `stream_model`: the weights streamed tensor by tensor (`SafetensorsStreamWriter`), then
  ``config.json``; the folder appears only when both are complete.
- `model_config_dict`: a config (a mapping, a ``PretrainedConfig``, a file or a folder)
  as the JSON data of ``config.json``, without the absolute path it was loaded from.

Pickled weights (``pytorch_model.bin``) are never read.

Examples:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from paramgen.spec import ParamSpec
    >>> spec = ParamSpec.from_state_dict({"pooler.dense.bias": torch.zeros(3)})
    >>> folder = Path(tempfile.mkdtemp()) / "m"
    >>> with stream_model(folder, spec.vector_tensors, {"model_type": "bert", "hidden_size": 3}) as w:
    ...     w.write_tensor("pooler.dense.bias", torch.ones(3))
    >>> state, config = read_model(folder)
    >>> state["pooler.dense.bias"].tolist(), config["model_type"]
    ([1.0, 1.0, 1.0], 'bert')
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from paramgen.formats._common import json_mapping, stream_folder
from paramgen.formats.safetensors import SafetensorsStreamWriter, read_tensors
from paramgen.io import read_json_object
from paramgen.spec import TensorSpec

__all__ = ["MODEL_WEIGHTS", "MODEL_CONFIG", "MODEL_INDEX", "is_model_folder", "model_config_dict", "read_model", "stream_model"]

#: The two files of a Hugging Face model folder that ``AutoModel.from_pretrained`` needs.
MODEL_WEIGHTS, MODEL_CONFIG = "model.safetensors", "config.json"
#: The index of a sharded model: ``{"weight_map": {tensor name: shard file}}``.
MODEL_INDEX = "model.safetensors.index.json"


def is_model_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding ``model.safetensors`` or a sharded model's index."""
    path = Path(path)
    return (path / MODEL_WEIGHTS).is_file() or (path / MODEL_INDEX).is_file()


def model_config_dict(config: Any) -> dict[str, Any]:
    """A Hugging Face model config as the JSON data of its ``config.json``.

    ``config`` is a mapping (the file's content), a ``transformers`` ``PretrainedConfig``
    (what its ``save_pretrained`` writes), or the path of a ``config.json`` or of a model
    folder holding one. A ``_name_or_path`` that is an absolute path (where the config was
    loaded from on this machine) is dropped: it means nothing elsewhere.

    Raises:
        FileNotFoundError: A path with no ``config.json``.
        TypeError: Not one of the above, or not JSON-serializable.
        ValueError: No ``model_type`` (``AutoModel`` cannot choose a class without it).

    Examples:
        >>> model_config_dict({"model_type": "bert", "hidden_size": 384, "_name_or_path": "/home/me/minilm"})
        {'model_type': 'bert', 'hidden_size': 384}
    """
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        file = path / MODEL_CONFIG if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"model_config: no {MODEL_CONFIG} at {path}")
        config = read_json_object(file)
    elif hasattr(config, "to_json_string") and not isinstance(config, Mapping):
        config = json.loads(config.to_json_string())  # exactly what PretrainedConfig.save_pretrained writes
    data = json_mapping(config, "model_config")
    if isinstance(data.get("_name_or_path"), str) and os.path.isabs(data["_name_or_path"]):
        del data["_name_or_path"]
    if not data.get("model_type"):
        raise ValueError("model_config has no 'model_type' (e.g. 'bert'); transformers' AutoModel cannot load a folder without it")
    return data


def read_model(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The state dict and the config of a Hugging Face model folder.

    A sharded model (``model.safetensors.index.json``) is read shard by shard and its
    tensors returned in the index's order.

    Returns:
        ``(state dict, config)``; ``config`` is ``None`` when the folder has no ``config.json``.

    Raises:
        FileNotFoundError: No weights, or a shard the index names is not in the folder.
        ValueError: A malformed index or config, unreadable weights, or tensors the index
            lists that no shard holds (names the file).
    """
    folder = Path(folder)
    index = folder / MODEL_INDEX
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} must have a non-empty 'weight_map' object (tensor name -> shard file)")
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = folder / str(shard)
            if Path(str(shard)).name != str(shard) or not shard_path.is_file():
                raise FileNotFoundError(f"{index} names shard {shard!r}, which is not a file in {folder}")
            state.update(read_tensors(shard_path))
        missing = sorted(set(weight_map) - set(state))
        if missing:
            raise ValueError(f"{index} lists tensors {missing[:5]} that no shard holds")
        state = {name: state[name] for name in weight_map}  # the index's order
    elif (folder / MODEL_WEIGHTS).is_file():
        state = read_tensors(folder / MODEL_WEIGHTS)
    else:
        raise FileNotFoundError(f"{folder} is not a Hugging Face model folder: it has no {MODEL_WEIGHTS} nor {MODEL_INDEX}")
    config_path = folder / MODEL_CONFIG
    return state, (read_json_object(config_path) if config_path.exists() else None)


@contextmanager
def stream_model(
    folder: str | os.PathLike,
    tensors: Iterable[TensorSpec],
    model_config: Any,
    *,
    extras: Mapping[str, torch.Tensor] | None = None,
    check_finite: bool = True,
) -> Iterator[SafetensorsStreamWriter]:
    """Stream a model folder that ``AutoModel`` loads: yields the writer of ``model.safetensors``.

    ``config.json`` is written after the weights are complete, and the folder, built under
    a temporary name beside ``folder``, is renamed into place only then: on any error (a
    full disk included) nothing is left, and an existing ``folder`` is never
    half-replaced. Tokenizer files are not written (copy them from the original folder if
    a pipeline needs them).

    Args:
        folder: The model folder; it must not exist or be empty.
        tensors: The tensors to stream (their names are the model file's).
        model_config: The model's ``config.json`` (see `model_config_dict`).
        extras: Tensors stored as given (e.g. frozen tensors of a base model).
        check_finite: Raise on NaN/Inf in streamed values.

    Raises:
        FileExistsError: ``folder`` exists and is not an empty folder.
        TypeError, ValueError: A config that is not JSON data or names no ``model_type``.
    """
    config = model_config_dict(model_config)
    with stream_folder(folder, MODEL_WEIGHTS, MODEL_CONFIG, config, tensors, extras=extras, check_finite=check_finite, replaces=()) as writer:
        yield writer
