"""Checkpoints as they come, read without unpickling anything.

A checkpoint is a state dict (or a module), a ``.safetensors`` file, a Hugging Face model
folder (``model.safetensors`` or a sharded ``model.safetensors.index.json``, with
``config.json``) or a PEFT adapter folder (``adapter_model.safetensors`` with
``adapter_config.json``). `read_checkpoint` reads any of them into a `LoadedCheckpoint`
with what the source says about it; ``.bin``/``.pt`` weights are refused with a message
that says how to convert them. `paramgen.zoo.ZooWriter` writes what it reads into a zoo.

Examples:
    >>> import torch
    >>> read = read_checkpoint(torch.nn.Linear(4, 2))
    >>> read.source, read.spec.numel
    ('module', 10)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from paramgen.formats import hf, peft
from paramgen.formats.safetensors import read_tensors
from paramgen.spec import ParamSpec

__all__ = ["CheckpointSource", "LoadedCheckpoint", "read_checkpoint"]

CheckpointSource = Mapping[str, torch.Tensor] | nn.Module | str | os.PathLike
"""What `ZooWriter.add` takes: a state dict, a module, or a path to a file or folder."""

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@attrs.frozen(eq=False)
class LoadedCheckpoint:
    """A checkpoint read from its source (`read_checkpoint`), with what the source says about it.

    Attributes:
        state_dict: Its tensors by name.
        spec: Their `ParamSpec` (floating tensors form the vector).
        name: The path, or ``"state dict"``/``"<Class> module"``, for messages.
        source: ``"state_dict"``, ``"module"``, ``"safetensors"``, ``"huggingface"`` or ``"peft"``.
        arch: Architecture named by the source (a Hugging Face class), if any.
        arch_description: Text description derived from the source, if any.
        metadata: What the source's config records (see `read_checkpoint`).
    """

    state_dict: dict[str, torch.Tensor]
    spec: ParamSpec
    name: str
    source: str
    arch: str | None = None
    arch_description: str | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)


def _refuse_pickle(path: Path) -> ValueError:
    return ValueError(
        f"{path} holds pickled weights, which paramgen never loads (unpickling runs code); save them as "
        "safetensors first, e.g. `model.save_pretrained(folder, safe_serialization=True)` or "
        "`safetensors.torch.save_file(state_dict, 'model.safetensors')`"
    )


def _read_huggingface(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state, config = hf.read_model(folder)
    config = config or {}
    metadata: dict[str, Any] = {"model_type": config.get("model_type"), "architectures": config.get("architectures")}
    if config:
        metadata["config"] = config
    return state, metadata


def _read_peft(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state, config = peft.read_adapter(folder)
    config_path = folder / peft.ADAPTER_CONFIG
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"{config_path}: 'r' must be a positive int, got {r!r}")
    alpha = config.get("lora_alpha", r)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise ValueError(f"{config_path}: 'lora_alpha' must be a number, got {alpha!r}")
    targets = config.get("target_modules")
    if isinstance(targets, list):
        targets = sorted(str(t) for t in targets)  # PEFT saves a set: its order is arbitrary
    metadata = {
        "peft_type": config.get("peft_type"),
        "r": r,
        "lora_alpha": alpha,
        "target_modules": targets,
        "base_model_name_or_path": config.get("base_model_name_or_path"),
    }
    return state, metadata


def _describe(spec: ParamSpec) -> str:
    shown = ", ".join(f"{t.name} {'x'.join(map(str, t.shape))}" for t in spec.vector_tensors[:4])
    more = ", ..." if len(spec.vector_tensors) > 4 else ""
    return f"{len(spec.tensors)} tensors, {spec.numel} weights: {shown}{more}"


def read_checkpoint(source: CheckpointSource) -> LoadedCheckpoint:
    """Read one checkpoint from any supported source (no pickle, ever).

    Args:
        source: A state dict (``name -> tensor``), an ``nn.Module``, a ``.safetensors``
            file, a Hugging Face model folder or a PEFT adapter folder.

    Returns:
        A `LoadedCheckpoint`: the state dict with its `ParamSpec`, the source kind and the metadata the
        source carries (``model_type``/``architectures`` of a Hugging Face
        ``config.json``; ``r``, ``lora_alpha``, ``target_modules`` and the base model
        of a PEFT ``adapter_config.json``, and the rows of its classification head as
        ``num_labels``). The spec of a file lays its tensors out canonically
        (`paramgen.ParamSpec.canonical`): their order in a file means nothing.

    Raises:
        FileNotFoundError: A path that does not exist.
        ValueError: An empty state dict, pickled weights, a folder with no weights, an
            unreadable file or a malformed config; the message says what was expected.
        TypeError: Anything else.
    """
    if isinstance(source, nn.Module):
        state = dict(source.state_dict())
        if not state:
            raise ValueError(f"the {type(source).__name__} module has no tensors")
        from paramgen.models import describe_architecture

        spec = ParamSpec.from_module(source)
        return LoadedCheckpoint(state, spec, f"{type(source).__name__} module", "module", arch_description=describe_architecture(source))
    if isinstance(source, Mapping):
        if not source:
            raise ValueError("expected a non-empty state dict (tensor name -> tensor), got an empty one")
        bad = [k for k, v in source.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise TypeError(f"a state dict maps str names to tensors; entries {bad[:5]!r} do not")
        state = dict(source)
        return LoadedCheckpoint(state, ParamSpec.from_state_dict(state), "state dict", "state_dict")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            "a checkpoint is a state dict, an nn.Module, a .safetensors file or a Hugging Face/PEFT folder; "
            f"got {type(source).__name__}"
        )
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_file():
        if path.suffix in _PICKLE_SUFFIXES:
            raise _refuse_pickle(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"expected a .safetensors file, got {path}")
        state = read_tensors(path)
        kind, metadata = "safetensors", dict[str, Any]()
    elif peft.is_adapter_folder(path):
        state, metadata = _read_peft(path)
        kind = "peft"
    elif hf.is_model_folder(path):
        state, metadata = _read_huggingface(path)
        kind = "huggingface"
    else:
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        if pickled:
            raise _refuse_pickle(path / pickled[0])
        raise ValueError(
            f"{path} holds no weights: expected a Hugging Face model folder (model.safetensors or "
            "model.safetensors.index.json, with config.json) or a PEFT adapter folder "
            "(adapter_model.safetensors with adapter_config.json)"
        )
    if not state:
        raise ValueError(f"{path} holds no tensors")
    # A file's tensor order means nothing (safetensors sorts by name): lay it out canonically,
    # so the same architecture read from any file or from paramgen.lora.LoRASetup matches.
    spec = ParamSpec.from_state_dict(state).canonical()
    if kind == "peft":
        head = peft.find_head({k: tuple(v.shape) for k, v in state.items()})
        if head is not None:
            metadata["num_labels"] = int(state[head[0]].shape[0])
    read = LoadedCheckpoint(state, spec, str(path), kind, metadata={k: v for k, v in metadata.items() if v is not None})
    if kind == "huggingface":
        archs = metadata.get("architectures") or []
        arch = str(archs[0]) if archs else metadata.get("model_type")
        read = attrs.evolve(read, arch=arch, arch_description=f"{arch or 'model'} ({metadata.get('model_type')}), {_describe(spec)}")
    elif kind == "peft":
        read = attrs.evolve(
            read,
            arch_description=(
                f"{metadata.get('peft_type') or 'LORA'} adapter r={metadata['r']} alpha={metadata['lora_alpha']} on "
                f"{metadata.get('target_modules')} of {metadata.get('base_model_name_or_path')}, {_describe(spec)}"
            ),
        )
    return read


def _is_checkpoint_folder(path: Path) -> bool:
    return hf.is_model_folder(path) or peft.is_adapter_folder(path)


def _expand(sources: CheckpointSource | Sequence[CheckpointSource]) -> list[CheckpointSource]:
    """The checkpoints of ``sources``: one source, a sequence of them, or a folder's
    ``.safetensors`` files and Hugging Face/PEFT subfolders, in name order."""
    if isinstance(sources, (str, os.PathLike)):
        path = Path(sources)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint source {path} does not exist")
        if path.is_file() or _is_checkpoint_folder(path):
            return [path]
        found: list[CheckpointSource] = [
            p for p in sorted(path.iterdir()) if (p.is_file() and p.suffix == ".safetensors") or (p.is_dir() and _is_checkpoint_folder(p))
        ]
        if not found:
            pickled = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
            if pickled:
                raise _refuse_pickle(path / pickled[0])
            raise ValueError(f"{path} holds no checkpoints: expected .safetensors files or Hugging Face/PEFT folders in it")
        return found
    if isinstance(sources, (Mapping, nn.Module)):
        return [sources]
    return list(sources)
