"""Conditioners for categorical conditions: a learned embedding or a fixed one-hot per key.

A key names one condition: a dataset (``"fashion_mnist"``), a (dataset, architecture)
pair written as one string (D2NWG App. C.1, e.g. ``"mnist|mlp-64"``), or a chunk index
(D2NWG App. A.4). Integer keys are accepted everywhere and mapped with ``str()``, so
``3`` and ``"3"`` are the same key.

Examples:
    >>> import torch
    >>> cond = IndexConditioner(["mnist", "fashion_mnist"], dim=8)
    >>> cond(["fashion_mnist", "mnist", "mnist"]).shape
    torch.Size([3, 8])
    >>> OneHotConditioner([0, 1, 2])([2, 0])
    tensor([[0., 0., 1.],
            [1., 0., 0.]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from paramgen.registry import Configurable

__all__ = ["IndexConditioner", "OneHotConditioner"]

_SHOWN_KEYS = 10  # how many known keys an unknown-key error lists


def _key_index(keys: Sequence[str | int], owner: str) -> dict[str, int]:
    """Map each key (``str()`` of ints) to its row, rejecting empty and duplicate keys."""
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence):
        raise TypeError(f"{owner}: expected a sequence of keys (str or int), got {type(keys).__name__}")
    index: dict[str, int] = {}
    for i, key in enumerate(keys):
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise TypeError(f"{owner}: expected keys of type str or int, got {type(key).__name__} at position {i}")
        name = str(key)
        if name in index:
            raise ValueError(f"{owner}: expected distinct keys, got {name!r} at positions {index[name]} and {i}")
        index[name] = i
    if not index:
        raise ValueError(f"{owner}: expected at least one key, got none")
    return index


def _lookup(index: dict[str, int], raw: Any, owner: str) -> torch.Tensor:
    """Rows ``(B,)`` of the keys in ``raw``; unknown keys raise ``KeyError``."""
    if isinstance(raw, torch.Tensor):
        if raw.dim() != 1 or raw.is_floating_point() or raw.is_complex():
            raise TypeError(f"{owner}: expected a 1-D integer tensor of keys, got {raw.dtype} {tuple(raw.shape)}")
        raw = raw.tolist()
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        # A bare string is a sequence of characters: refuse instead of looking up each one.
        raise TypeError(f"{owner}: expected a sequence of keys, got {type(raw).__name__}; wrap one key in a list")
    if len(raw) == 0:
        raise ValueError(f"{owner}: expected at least one key, got an empty batch")
    rows = []
    for i, key in enumerate(raw):
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise TypeError(f"{owner}: expected keys of type str or int, got {type(key).__name__} at position {i}")
        name = str(key)
        if name not in index:
            known = list(index)[:_SHOWN_KEYS]
            more = f" and {len(index) - len(known)} more" if len(index) > len(known) else ""
            raise KeyError(f"{owner}: unknown key {name!r} at position {i}; known keys: {known}{more}")
        rows.append(index[name])
    return torch.tensor(rows, dtype=torch.long)  # (B,)


class IndexConditioner(nn.Module, Configurable):
    """A learned vector per key (dataset, dataset/architecture pair or chunk index).

    The embedding table is initialized N(0, 1) per entry (``nn.Embedding``'s default),
    drawing from torch's global generator like any ``nn.Module``; a fitted conditioner is
    rebuilt with `from_config` and ``load_state_dict``.

    Args:
        keys: The known keys, in row order; ints are mapped with ``str()``.
        dim: Width of each condition vector.

    Raises:
        ValueError: Duplicate keys (after ``str()``), no keys, or ``dim < 1``.

    Examples:
        >>> import torch
        >>> cond = IndexConditioner(["a", "b", 3], dim=4)
        >>> cond(["b", 3, "3"]).shape
        torch.Size([3, 4])
        >>> rebuilt = IndexConditioner.from_config(cond.config())
        >>> _ = rebuilt.load_state_dict(cond.state_dict())
        >>> torch.equal(rebuilt(["a"]), cond(["a"]))
        True
    """

    config_canonical = ("keys", "dim")  # keys recorded as strings

    def __init__(self, keys: Sequence[str | int], *, dim: int = 64) -> None:
        super().__init__()
        self._index = _key_index(keys, "IndexConditioner")
        if dim < 1:
            raise ValueError(f"IndexConditioner: expected dim >= 1, got {dim}")
        self.keys: tuple[str, ...] = tuple(self._index)
        self.dim = int(dim)
        self.embedding = nn.Embedding(len(self.keys), self.dim)

    def forward(self, raw: Sequence[str | int] | torch.Tensor) -> torch.Tensor:
        """Embed a batch of keys.

        Args:
            raw: ``B`` keys (str or int), or a 1-D integer tensor of keys.

        Returns:
            ``(B, dim)`` condition vectors.

        Raises:
            KeyError: A key that was not given to the constructor.
        """
        rows = _lookup(self._index, raw, "IndexConditioner").to(self.embedding.weight.device)  # (B,)
        return self.embedding(rows)  # (B, dim)

    def extra_repr(self) -> str:
        return f"num_keys={len(self.keys)}, dim={self.dim}"


class OneHotConditioner(nn.Module, Configurable):
    """A fixed one-hot vector per key; no parameters (the ablation baseline of Cond P-Diff, table 4b).

    Args:
        keys: The known keys, in row order; ints are mapped with ``str()``.

    Examples:
        >>> cond = OneHotConditioner(["cats", "dogs"])
        >>> cond.dim, len(cond.state_dict())
        (2, 0)
        >>> cond(["dogs"])
        tensor([[0., 1.]])
    """

    _anchor: torch.Tensor
    config_canonical = ("keys",)  # recorded as strings

    def __init__(self, keys: Sequence[str | int]) -> None:
        super().__init__()
        self._index = _key_index(keys, "OneHotConditioner")
        self.keys: tuple[str, ...] = tuple(self._index)
        self.dim = len(self.keys)
        # An empty, non-persistent buffer only to follow ``.to(device)``: no identity matrix
        # (it would cost dim**2 floats for thousands of chunk indices).
        self.register_buffer("_anchor", torch.empty(0), persistent=False)

    def forward(self, raw: Sequence[str | int] | torch.Tensor) -> torch.Tensor:
        """One-hot vectors ``(B, dim)`` (float32, on this module's device) for ``B`` keys.

        Raises:
            KeyError: A key that was not given to the constructor.
        """
        rows = _lookup(self._index, raw, "OneHotConditioner").to(self._anchor.device)  # (B,)
        return F.one_hot(rows, self.dim).to(self._anchor.dtype)  # (B, dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
