"""`LoRAZoo`: adapters of several tasks as one matrix, saved as safetensors + a JSON manifest.

Built from training runs (`LoRAZoo.from_adapters`) or from PEFT adapter folders on disk
(`LoRAZoo.from_folders`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from paramgen.io import read_json, save_safetensors, write_json
from paramgen.lora.adapters import load_adapter
from paramgen.lora.setup import LoRASetup, pad_head
from paramgen.spec import SpecMismatchError

__all__ = ["LoRAZoo"]

_ZOO_FORMAT = "paramgen.LoRAZoo"


@attrs.define(eq=False)
class LoRAZoo:
    """Adapters of several tasks as one ``(M, D)`` matrix in ``setup.spec()`` order.

    Attributes:
        setup: The layout.
        flat: ``(M, D)`` float32 vectors (heads padded).
        records: One dict per row: ``task``, ``num_labels``, ``run``, ``step``, ...
    """

    setup: LoRASetup
    flat: torch.Tensor
    records: list[dict[str, Any]]

    def __attrs_post_init__(self) -> None:
        d = self.setup.spec().numel
        if self.flat.ndim != 2 or self.flat.shape[1] != d or len(self.records) != self.flat.shape[0]:
            raise SpecMismatchError(f"expected ({len(self.records)}, {d}) vectors for {len(self.records)} records, got {tuple(self.flat.shape)}")

    def __len__(self) -> int:
        return len(self.records)

    @property
    def tasks(self) -> list[str]:
        return [r["task"] for r in self.records]

    @classmethod
    def from_adapters(cls, adapters: Sequence[Mapping[str, torch.Tensor]], records: Sequence[Mapping[str, Any]], setup: LoRASetup) -> LoRAZoo:
        """Stack padded adapter state dicts (e.g. from `MiniLMLoRA.train_lora`)."""
        flat, _ = setup.spec().flatten([pad_head(a, setup) for a in adapters])
        return cls(setup, flat.float(), [dict(r) for r in records])

    @classmethod
    def from_folders(cls, folders: Sequence[str | os.PathLike], tasks: Sequence[str], setup: LoRASetup | None = None) -> LoRAZoo:
        """Build a zoo from PEFT adapter folders on disk (one task name per folder)."""
        setup = setup or LoRASetup()
        if len(folders) != len(tasks):
            raise ValueError(f"expected one task per folder, got {len(folders)} folders and {len(tasks)} tasks")
        adapters, records = [], []
        for folder, task in zip(folders, tasks, strict=True):
            tensors, k = load_adapter(folder, setup)
            adapters.append(tensors)
            records.append({"task": task, "num_labels": k, "source": str(folder)})
        return cls.from_adapters(adapters, records, setup)

    def adapters(self, index: Sequence[int] | None = None) -> list[dict[str, torch.Tensor]]:
        """Rows as padded adapter state dicts."""
        rows = self.flat if index is None else self.flat[list(index)]
        return self.setup.spec().unflatten(rows)

    def save(self, root: str | os.PathLike) -> Path:
        """``zoo.safetensors`` (tensor name -> ``(M, *shape)``) and ``manifest.json``."""
        root = Path(root)
        stacked = self.setup.spec().unflatten_stacked(self.flat)
        save_safetensors(root / "zoo.safetensors", {k: v.contiguous() for k, v in stacked.items()}, metadata={"format": _ZOO_FORMAT})
        write_json(root / "manifest.json", {"format": _ZOO_FORMAT, "setup": self.setup.to_dict(), "records": self.records})
        return root

    @classmethod
    def open(cls, root: str | os.PathLike) -> LoRAZoo:
        """Read a zoo written by `save`."""
        from safetensors.torch import load_file

        root = Path(root)
        if not (root / "manifest.json").is_file():
            raise FileNotFoundError(f"{root} holds no LoRA zoo (no manifest.json)")
        manifest = read_json(root / "manifest.json")
        if manifest.get("format") != _ZOO_FORMAT:
            raise ValueError(f"{root}/manifest.json is not a LoRA zoo (format {manifest.get('format')!r})")
        setup = LoRASetup.from_dict(manifest["setup"])
        flat, _ = setup.spec().flatten_stacked(load_file(str(root / "zoo.safetensors")))
        return cls(setup, flat.float(), manifest["records"])
