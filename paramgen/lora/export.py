"""`AdapterExport`: what a generator fitted on a zoo of PEFT adapters needs to write its samples as adapters.

A generator's weights say the LoRA rank, layers and projections, and its head's padded
width; they do not say ``lora_alpha``, the base model, or how many labels each task has
(heads are zero-padded to the widest, `paramgen.zoo.ZooWriter`). The zoo knows: each
imported adapter records them. `AdapterExport.from_zoo` collects them and `save` writes
them beside the fitted generator (``adapter_export.json``), where ``paramgen sample
--format peft`` reads them (`load`) to cut each sampled head to its task's labels.

Examples:
    >>> export = AdapterExport(lora_alpha=4.0, base_model="sentence-transformers/all-MiniLM-L6-v2",
    ...                        num_labels={"sst2": 2, "sentiment": 3}, descriptions={"Is the review positive?": 2})
    >>> export.labels("sentiment"), export.labels("Is the review positive?"), export.labels("unknown")
    (3, 2, None)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from paramgen.io import read_json, write_json

__all__ = ["EXPORT_FILE", "AdapterExport"]

logger = logging.getLogger(__name__)

#: The file `AdapterExport.save` writes into a generator's folder.
EXPORT_FILE = "adapter_export.json"
_FORMAT = "paramgen.AdapterExport"


def _as_dict(value: Mapping[str, int]) -> dict[str, int]:
    return dict(value)


def _labels(value: Any, where: str) -> dict[str, int]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 1 for k, v in value.items()):
        raise ValueError(f"{where}: expected an object of names to label counts (positive integers), got {value!r}"[:300])
    return dict(value)


@attrs.frozen(eq=False)
class AdapterExport:
    """The adapter settings a zoo's PEFT adapters share, and each task's label count.

    Attributes:
        lora_alpha: The adapters' ``lora_alpha`` (``None``: not recorded, or not one value).
        base_model: Their base model, as `paramgen.lora.save_adapter` should record it
            (MiniLM by its name, whatever path the adapters recorded for it).
        num_labels: Task name -> labels.
        descriptions: Task description -> labels (the conditions of a text generator).
    """

    lora_alpha: float | None = None
    base_model: str | None = None
    num_labels: dict[str, int] = attrs.field(factory=dict, converter=_as_dict)
    descriptions: dict[str, int] = attrs.field(factory=dict, converter=_as_dict)

    def labels(self, cond: Any, task: str | None = None) -> int | None:
        """The labels of a sampled adapter: its ``task``'s, else those of the condition
        (a task name or a task description); ``None`` when neither is known."""
        for key in (task, cond):
            if isinstance(key, str):
                if key in self.num_labels:
                    return self.num_labels[key]
                if key in self.descriptions:
                    return self.descriptions[key]
        return None

    @classmethod
    def from_zoo(cls, zoo: Any) -> AdapterExport | None:
        """Collect it from a `paramgen.zoo.Zoo` (``None`` when the zoo holds no PEFT adapters).

        A task recorded with several label counts keeps the largest, with a warning.
        """
        from paramgen.lora.adapters import _same_base
        from paramgen.lora.setup import BASE_MODEL_ID, LoRASetup

        adapters = [c for c in zoo if c.metadata.get("source") == "peft"]
        if not adapters:
            return None
        alphas = {float(c.metadata["lora_alpha"]) for c in adapters if isinstance(c.metadata.get("lora_alpha"), (int, float))}
        bases = {c.metadata.get("base_model_name_or_path") for c in adapters} - {None}
        base = next(iter(bases)) if len(bases) == 1 else None
        if isinstance(base, str) and _same_base(base, LoRASetup()):
            base = BASE_MODEL_ID  # a path to the packaged MiniLM is not portable; its name is
        num_labels: dict[str, int] = {}
        descriptions: dict[str, int] = {}
        for c in adapters:
            k = c.metadata.get("num_labels")
            if not isinstance(k, int):
                continue
            for table, key in ((num_labels, c.task), (descriptions, c.task_description)):
                if table.get(key, k) != k:
                    logger.warning("task %r of zoo %s is recorded with %d and %d labels; its sampled adapters get %d", key, zoo.root, table[key], k, max(k, table[key]))
                table[key] = max(k, table.get(key, k))
        return cls(lora_alpha=next(iter(alphas)) if len(alphas) == 1 else None, base_model=base, num_labels=num_labels, descriptions=descriptions)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``adapter_export.json`` into ``folder`` (atomically); returns its path."""
        path = Path(folder) / EXPORT_FILE
        write_json(path, {"format": _FORMAT, **attrs.asdict(self)})
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> AdapterExport | None:
        """Read ``adapter_export.json`` from ``folder``; ``None`` when there is none.

        Raises:
            ValueError: The file is not one `save` writes (named, with what was expected).
        """
        path = Path(folder) / EXPORT_FILE
        if not path.is_file():
            return None
        data = read_json(path)
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a paramgen adapter export (expected an object with format {_FORMAT!r})")
        alpha, base = data.get("lora_alpha"), data.get("base_model")
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))):
            raise ValueError(f"{path}: 'lora_alpha' must be a number or null, got {alpha!r}")
        if base is not None and not isinstance(base, str):
            raise ValueError(f"{path}: 'base_model' must be a string or null, got {base!r}")
        return cls(
            lora_alpha=None if alpha is None else float(alpha), base_model=base,
            num_labels=_labels(data.get("num_labels", {}), f"{path}: 'num_labels'"), descriptions=_labels(data.get("descriptions", {}), f"{path}: 'descriptions'"),
        )  # fmt: skip
