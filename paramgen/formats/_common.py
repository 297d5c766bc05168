"""What the folder formats share: config files as JSON data, and folders streamed whole."""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from paramgen.formats.safetensors import SafetensorsStreamWriter
from paramgen.io import atomic_folder, write_json
from paramgen.spec import TensorSpec


def json_mapping(config: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``config`` as JSON-ready data (sets become sorted lists), or a `TypeError` naming ``what``."""
    if not isinstance(config, Mapping) or not all(isinstance(k, str) for k in config):
        raise TypeError(f"{what} must be a mapping of strings (the JSON file's content), got {type(config).__name__}")
    data = {k: sorted(v) if isinstance(v, (set, frozenset)) else v for k, v in config.items()}  # peft keeps target_modules as a set
    try:
        json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} must be JSON-serializable: {e}") from e
    return data


@contextmanager
def stream_folder(
    folder: str | os.PathLike,
    weights_name: str,
    config_name: str,
    config: Mapping[str, Any],
    tensors: Iterable[TensorSpec],
    *,
    extras: Mapping[str, torch.Tensor] | None,
    check_finite: bool,
    replaces: Collection[str],
) -> Iterator[SafetensorsStreamWriter]:
    """A writer of ``folder/weights_name``; ``config_name`` is written once the weights are
    complete, and the folder is renamed into place whole (`paramgen.io.atomic_folder`)."""
    with atomic_folder(folder, replaces=replaces) as tmp:
        with SafetensorsStreamWriter(tmp / weights_name, tensors, extras=extras, check_finite=check_finite) as writer:
            yield writer
        write_json(tmp / config_name, config)
