"""Vectorizers: lay a model's flat weight vector out as rows for a generator.

Every vectorizer turns state dicts into a `VectorBatch` of ``values (B, N, C)``,
a padding ``mask``, and the position of each row (``layer``, ``chunk``), and back:

- `ModelVectorizer`: one row per model, zero-padded to ``length`` (the longest
  model of a zoo, ``d_max``).
- `LayerVectorizer`: each layer (module) on its own rows; a layer's vector is
  zero-padded to a multiple of ``chunk_size`` and split into equal chunks, or, with
  ``chunk_size=None``, padded to the largest layer and kept whole (chunk-free).
- `ChunkVectorizer`: the whole model padded to a multiple of ``chunk_size`` and
  split into ``ceil(D / chunk_size)`` chunks; a chunk's ``layer`` is the layer of its
  first entry.
- `FamilyVectorizer`: several architectures, each with its own layout, padded with
  empty rows to one shape ``(N, C)`` so that one generator serves them all (IGPG).

Each layout is one precomputed index map, so packing and unpacking a whole zoo is a
single gather, and the round trip is bit-exact.

Devices: the index maps are built on the CPU; ``pack`` / ``unpack`` / ``from_flat`` use
copies on the device of their input, made once per device and cached, so a vectorizer
serves tensors on any device. ``to(device)`` warms that cache and moves `mask`,
``layer`` and ``chunk`` (which have no input to follow) to ``device``.

Examples:
    >>> import torch
    >>> from paramgen.spec import ParamSpec
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> vec = ChunkVectorizer(ParamSpec.from_module(net), chunk_size=16)
    >>> batch = vec.flatten([net.state_dict()])
    >>> batch.values.shape  # 58 weights -> 4 chunks of 16
    torch.Size([1, 4, 16])
    >>> restored = vec.unflatten(batch.values, extras=batch.extras)[0]
    >>> all(torch.equal(restored[k], v) for k, v in net.state_dict().items())
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from paramgen.interfaces import VectorBatch
from paramgen.registry import Configurable
from paramgen.spec import ParamSpec, SpecMismatchError

__all__ = [
    "VectorBatch",
    "ModelVectorizer",
    "LayerVectorizer",
    "ChunkVectorizer",
    "FamilyVectorizer",
    "vectorizer_from_config",
]

StateDicts = Sequence[Mapping[str, torch.Tensor]] | Mapping[str, torch.Tensor]


class _IndexLayout(Configurable):
    """Shared mechanics: ``src[p]`` is the flat index stored at row slot ``p`` or -1.

    Subclasses only compute ``src``, ``layer`` and ``chunk`` in ``__init__``.
    """

    spec: ParamSpec
    rows: int  # N
    width: int  # C
    _src: torch.Tensor  # (N*C,) long, -1 = padding
    _inv: torch.Tensor  # (D,) long: slot of each flat index
    layer: torch.Tensor  # (N,)
    chunk: torch.Tensor  # (N,)

    def _finish(self, src: torch.Tensor, layer: torch.Tensor, chunk: torch.Tensor, width: int) -> None:
        self.width = width
        self.rows = src.numel() // width
        self._src = src
        real = torch.nonzero(src >= 0).squeeze(1)
        inv = torch.empty(self.spec.numel, dtype=torch.long)
        inv[src[real]] = real
        self._inv = inv
        self._gather = torch.where(src >= 0, src, self.spec.numel)  # padding reads a zero column
        self.layer = layer
        self.chunk = chunk
        self._mask = (src >= 0).reshape(self.rows, self.width)
        self._device = torch.device("cpu")
        self._maps: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(gather, inv, mask)`` on ``device``, copied there once."""
        maps = self._maps.get(device)
        if maps is None:
            maps = self._maps[device] = (self._gather.to(device), self._inv.to(device), self._mask.to(device))
        return maps

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Any:
        """Keep `mask`, ``layer`` and ``chunk`` on ``device``; returns ``self``.

        ``dtype`` is ignored: a layout holds only indices and masks, and values keep their
        own dtype. ``pack`` / ``unpack`` follow their input's device either way.

        Examples:
            >>> import torch
            >>> from paramgen.spec import ParamSpec
            >>> vec = ChunkVectorizer(ParamSpec.from_module(torch.nn.Linear(3, 2)), chunk_size=4).to("cpu")
            >>> vec.mask.device.type
            'cpu'
        """
        if device is not None:
            self._device = torch.empty(0, device=device).device  # "cuda" -> "cuda:0", as tensors report it
            self.layer, self.chunk = self.layer.to(self._device), self.chunk.to(self._device)
            self._on(self._device)
        return self

    @property
    def mask(self) -> torch.Tensor:
        """``(N, C)`` bool, ``True`` on real entries (on the device given to `to`)."""
        return self._on(self._device)[2]

    def pack(self, flat: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` flat vectors (in spec order) to ``(B, N, C)`` rows."""
        if flat.ndim != 2 or flat.shape[1] != self.spec.numel:
            raise SpecMismatchError(f"expected flat vectors of shape (B, {self.spec.numel}), got {tuple(flat.shape)}")
        padded = torch.cat([flat, flat.new_zeros(flat.shape[0], 1)], dim=1)  # (B, D+1)
        return padded[:, self._on(flat.device)[0]].reshape(flat.shape[0], self.rows, self.width)

    def unpack(self, values: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` rows to ``(B, D)`` flat vectors; padding is dropped."""
        if values.ndim == 2:
            values = values.unsqueeze(0)
        if values.ndim != 3 or tuple(values.shape[1:]) != (self.rows, self.width):
            raise SpecMismatchError(
                f"expected vectorized weights of shape (B, {self.rows}, {self.width}), got {tuple(values.shape)}"
            )
        return values.reshape(values.shape[0], -1)[:, self._on(values.device)[1]]

    def flatten(self, state_dicts: StateDicts, *, check_finite: bool = True) -> VectorBatch:
        """State dicts of the spec's architecture to a `VectorBatch`."""
        flat, extras = self.spec.flatten(state_dicts, check_finite=check_finite)
        return self.from_flat(flat, extras)

    def from_flat(self, flat: torch.Tensor, extras: Mapping[str, torch.Tensor] | None = None) -> VectorBatch:
        """Wrap ``(B, D)`` flat vectors (e.g. from a zoo or a normalizer) as a batch."""
        values = self.pack(flat)
        return VectorBatch(
            values=values,
            mask=self._on(values.device)[2].expand(values.shape[0], -1, -1),
            layer=self.layer,
            chunk=self.chunk,
            extras=dict(extras or {}),
        )

    def unflatten(
        self,
        values: torch.Tensor,
        *,
        extras: Mapping[str, torch.Tensor] | None = None,
        base: Mapping[str, torch.Tensor] | None = None,
        check_finite: bool = True,
    ) -> list[dict[str, torch.Tensor]]:
        """``(B, N, C)`` values to state dicts (see `ParamSpec.unflatten`)."""
        return self.spec.unflatten(self.unpack(values), extras=extras, base=base, check_finite=check_finite)

class ModelVectorizer(_IndexLayout):
    """One row per model, zero-padded to ``length``.

    Args:
        spec: The architecture.
        length: Row length; at least ``spec.numel``. Use the longest model of a zoo of
            several architectures so that all rows line up. Defaults to ``spec.numel``.
    """

    config_constants = {"type": "model"}  # what vectorizer_from_config dispatches on
    config_ignore = ("spec",)  # saved beside the vectorizer, given back by vectorizer_from_config
    config_canonical = ("length",)  # None recorded as the spec's size

    def __init__(self, spec: ParamSpec, *, length: int | None = None) -> None:
        self.spec = spec
        d = spec.numel
        length = d if length is None else length
        if length < d:
            raise ValueError(f"length must be at least the model's {d} weights, got {length}")
        self.length = length
        src = torch.cat([torch.arange(d), torch.full((length - d,), -1)])
        self._finish(src, torch.tensor([-1]), torch.tensor([0]), width=length)

class ChunkVectorizer(_IndexLayout):
    """The whole flat vector cut into chunks of ``chunk_size``.

    Args:
        spec: The architecture.
        chunk_size: Entries per chunk (``K``).
        num_chunks: Pad with empty chunks to this many rows (to line up a zoo of several
            architectures); defaults to ``ceil(D / K)``.
    """

    config_constants = {"type": "chunk"}
    config_ignore = ("spec",)
    config_canonical = ("num_chunks",)  # None recorded as the count it resolves to

    def __init__(self, spec: ParamSpec, *, chunk_size: int, num_chunks: int | None = None) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
        self.spec = spec
        self.chunk_size = chunk_size
        d = spec.numel
        needed = -(-d // chunk_size)
        num_chunks = needed if num_chunks is None else num_chunks
        if num_chunks < needed:
            raise ValueError(f"num_chunks must be at least {needed} for {d} weights in chunks of {chunk_size}, got {num_chunks}")
        self.num_chunks = num_chunks
        total = num_chunks * chunk_size
        src = torch.cat([torch.arange(d), torch.full((total - d,), -1)])
        first = torch.arange(0, needed * chunk_size, chunk_size)
        layer = torch.cat([spec.layer_ids()[first], torch.full((num_chunks - needed,), -1)])
        self._finish(src, layer, torch.arange(num_chunks), width=chunk_size)


# A chunk-free layer layout pads every layer to the widest one; past this many slots and
# this many times the weights, the padding (index maps and every batch of rows) is refused.
MAX_PADDED_SLOTS = 1 << 24
MAX_PADDING_RATIO = 4


def _check_whole_layers(spec: ParamSpec) -> None:
    """Refuse a chunk-free layer layout whose padding would dwarf the model (e.g. MiniLM:
    36 layers padded to its 30522 x 384 word embeddings is 420M slots for 22.7M weights)."""
    sizes: dict[int, int] = {}
    for t in spec.vector_tensors:
        sizes[t.layer] = sizes.get(t.layer, 0) + t.numel
    slots = len(sizes) * max(sizes.values())
    if slots > MAX_PADDED_SLOTS and slots > MAX_PADDING_RATIO * spec.numel:
        widest = max(sizes, key=sizes.__getitem__)
        raise ValueError(
            f"LayerVectorizer(chunk_size=None) would pad {len(sizes)} layers to the widest "
            f"({spec.layers[widest]!r}, {sizes[widest]} weights): {slots} slots for {spec.numel} weights "
            f"({slots * 8 / 2**30:.1f} GiB of index map alone); pass chunk_size= (e.g. 4096) to cut "
            "each layer into chunks, or use a ChunkVectorizer"
        )


class LayerVectorizer(_IndexLayout):
    """Each layer on its own rows.

    Args:
        spec: The architecture.
        chunk_size: Split each layer into chunks of this size (its vector zero-padded to
            a multiple of it). ``None`` keeps each layer whole in one row, padded to the
            largest layer.

    Raises:
        ValueError: ``chunk_size=None`` on a model whose layers differ so much in size
            that padding them all to the largest would be more than
            ``MAX_PADDING_RATIO`` times the weights and over ``MAX_PADDED_SLOTS`` entries
            (a transformer's word embeddings): refused before allocating anything.
    """

    config_constants = {"type": "layer"}
    config_ignore = ("spec",)

    def __init__(self, spec: ParamSpec, *, chunk_size: int | None = None) -> None:
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
        if chunk_size is None:
            _check_whole_layers(spec)  # before any index map is allocated
        self.spec = spec
        self.chunk_size = chunk_size
        layer_ids = spec.layer_ids()
        layers, counts = torch.unique(layer_ids, return_counts=True)
        members = torch.argsort(layer_ids, stable=True).split(counts.tolist())  # flat indices per layer
        width = chunk_size if chunk_size is not None else max(len(m) for m in members)
        pieces, layer_of_row, chunk_of_row = [], [], []
        for layer, idx in zip(layers.tolist(), members, strict=True):
            n_rows = -(-len(idx) // width)
            pieces.append(torch.cat([idx, torch.full((n_rows * width - len(idx),), -1)]))
            layer_of_row.append(torch.full((n_rows,), layer))
            chunk_of_row.append(torch.arange(n_rows))
        self._finish(torch.cat(pieces), torch.cat(layer_of_row), torch.cat(chunk_of_row), width=width)


def vectorizer_from_config(config: Mapping[str, Any], spec: ParamSpec) -> ModelVectorizer | LayerVectorizer | ChunkVectorizer:
    """Rebuild a vectorizer from its `config` and spec.

    Examples:
        >>> import torch
        >>> from paramgen.spec import ParamSpec
        >>> spec = ParamSpec.from_module(torch.nn.Linear(3, 2))
        >>> vectorizer_from_config({"type": "chunk", "chunk_size": 4}, spec).rows
        2
    """
    kinds: dict[str, Any] = {"model": ModelVectorizer, "layer": LayerVectorizer, "chunk": ChunkVectorizer}
    kind = config.get("type")
    if kind not in kinds:
        raise ValueError(f"vectorizer type must be one of {sorted(kinds)}, got {kind!r}")
    return kinds[kind].from_config(config, spec=spec)


class FamilyVectorizer:
    """Several architectures in rows of one shape: one generator for a model family (IGPG).

    Each member keeps its own layout; members with fewer rows or narrower rows are padded
    with empty entries (mask ``False``) to the family's ``rows`` and ``width``. A member needs no
    training data: listing an architecture here is what lets a fitted generator write
    weights for it (an unseen depth or width).

    Args:
        members: Architecture key -> vectorizer of that architecture.
        rows: Rows of every layout; at least the largest member's (default: that).
        width: Row width; at least the widest member's (default: that).

    Examples:
        >>> import torch
        >>> from paramgen.spec import ParamSpec
        >>> small, big = torch.nn.Linear(3, 2), torch.nn.Linear(6, 4)
        >>> fam = FamilyVectorizer.chunked({"small": ParamSpec.from_module(small), "big": ParamSpec.from_module(big)}, chunk_size=4)
        >>> fam.rows, fam.width  # big: 28 weights -> 7 chunks; small: 8 -> 2 chunks + 5 empty rows
        (7, 4)
        >>> rows = fam.pack(fam.specs["small"].flatten([small.state_dict()])[0], "small")
        >>> rows.shape, int(fam.mask_of("small").sum())
        (torch.Size([1, 7, 4]), 8)
        >>> torch.equal(fam.unpack(rows, "small"), fam.specs["small"].flatten([small.state_dict()])[0])
        True
    """

    def __init__(self, members: Mapping[str, _IndexLayout], *, rows: int | None = None, width: int | None = None) -> None:
        if not members:
            raise ValueError("a FamilyVectorizer needs at least one member architecture")
        need_rows = max(v.rows for v in members.values())
        need_width = max(v.width for v in members.values())
        rows = need_rows if rows is None else rows
        width = need_width if width is None else width
        if rows < need_rows:
            raise ValueError(f"rows must be at least the largest member's {need_rows}, got {rows}")
        if width < need_width:
            raise ValueError(f"width must be at least the widest member's {need_width}, got {width}")
        self.members = dict(members)
        self.rows = rows
        self.width = width

    @classmethod
    def chunked(cls, specs: Mapping[str, ParamSpec], *, chunk_size: int, layerwise: bool = False) -> FamilyVectorizer:
        """Every member cut into chunks of ``chunk_size`` (whole model, or layer by layer)."""
        if layerwise:
            return cls({k: LayerVectorizer(s, chunk_size=chunk_size) for k, s in specs.items()})
        return cls({k: ChunkVectorizer(s, chunk_size=chunk_size) for k, s in specs.items()})

    @classmethod
    def layerwise(cls, specs: Mapping[str, ParamSpec]) -> FamilyVectorizer:
        """Every layer whole in its own row (chunk-free), padded to the widest layer of the family."""
        return cls({k: LayerVectorizer(s) for k, s in specs.items()})

    @classmethod
    def modelwise(cls, specs: Mapping[str, ParamSpec]) -> FamilyVectorizer:
        """Every member as one row, zero-padded to the largest member (IGPG's model-wise encoding)."""
        length = max(s.numel for s in specs.values())
        return cls({k: ModelVectorizer(s, length=length) for k, s in specs.items()})

    @property
    def keys(self) -> list[str]:
        """The member architectures, in order."""
        return list(self.members)

    @property
    def specs(self) -> dict[str, ParamSpec]:
        """Architecture key -> spec."""
        return {k: v.spec for k, v in self.members.items()}

    def member(self, arch: str) -> _IndexLayout:
        """The layout of one architecture; unknown keys raise a `KeyError` naming the known ones."""
        if arch not in self.members:
            raise KeyError(f"unknown architecture {arch!r}; this family has {sorted(self.members)}")
        return self.members[arch]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> FamilyVectorizer:
        """Move every member's layout (see `ChunkVectorizer.to`); returns ``self``."""
        for m in self.members.values():
            m.to(device, dtype)
        return self

    def mask_of(self, arch: str) -> torch.Tensor:
        """``(N, C)`` bool mask of one architecture, ``False`` on padding and empty rows."""
        m = self.member(arch)
        return self._pad(m.mask, m)

    def pack(self, flat: torch.Tensor, arch: str) -> torch.Tensor:
        """``(B, D_arch)`` flat vectors of one architecture to ``(B, N, C)`` rows."""
        m = self.member(arch)
        return self._pad(m.pack(flat), m)

    def _pad(self, rows: torch.Tensor, m: _IndexLayout) -> torch.Tensor:
        """``rows`` of member ``m`` padded with empty entries to ``(..., N, C)`` (as is when they fit)."""
        if (m.rows, m.width) == (self.rows, self.width):
            return rows
        return F.pad(rows, (0, self.width - m.width, 0, self.rows - m.rows))

    def unpack(self, values: torch.Tensor, arch: str) -> torch.Tensor:
        """``(B, N, C)`` rows to ``(B, D_arch)`` flat vectors of one architecture."""
        m = self.member(arch)
        if values.ndim != 3 or tuple(values.shape[1:]) != (self.rows, self.width):
            raise SpecMismatchError(f"expected vectorized weights of shape (B, {self.rows}, {self.width}), got {tuple(values.shape)}")
        return m.unpack(values[:, : m.rows, : m.width])

    def config(self) -> dict[str, Any]:
        return {
            "type": "family",
            "rows": self.rows,
            "width": self.width,
            "members": {k: {"spec": v.spec.to_dict(), "vectorizer": v.config()} for k, v in self.members.items()},
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FamilyVectorizer:
        members = {k: vectorizer_from_config(e["vectorizer"], ParamSpec.from_dict(e["spec"])) for k, e in config["members"].items()}
        return cls(members, rows=config["rows"], width=config.get("width"))
