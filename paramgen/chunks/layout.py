"""How a model's tensors are cut into chunks: `ChunkLayout`, one row per chunk.

Each selected tensor is cut into chunks of ``chunk_size`` values; per chunk the layout
holds its tensor, its index within the tensor, its offset and length, the tensor's *type*
(`module_type`) and block index, as ``int64`` tensors for conditioners.

Examples:
    >>> import torch
    >>> from paramgen.spec import ParamSpec
    >>> layout = ChunkLayout(ParamSpec.from_module(torch.nn.Linear(6, 4)), 8)  # weight 24, bias 4
    >>> layout.num_chunks, layout.lengths.tolist()
    (4, [8, 8, 8, 4])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import torch

from paramgen.spec import ParamSpec, TensorSpec

__all__ = ["ChunkInfo", "ChunkLayout", "module_type"]


# --------------------------------------------------------------------------- names
def module_type(name: str) -> tuple[str, int]:
    """A tensor's type and block index: the name after its first numeric component.

    Tensors of the same kind in different blocks share a type, which is what a chunk's
    condition needs (D2NWG ranks and conditions layers per type: q, k, v, o, ...).

    Examples:
        >>> module_type("encoder.layer.3.attention.self.query.weight")
        ('attention.self.query.weight', 3)
        >>> module_type("embeddings.LayerNorm.bias")  # no index: its own type
        ('embeddings.LayerNorm.bias', -1)
        >>> module_type("blocks.0")  # nothing after the index: the container's name
        ('blocks', 0)
    """
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            rest = ".".join(parts[i + 1 :]) or ".".join(parts[:i]) or name
            return rest, int(part)
    return name, -1


# --------------------------------------------------------------------------- layout
@attrs.frozen
class ChunkInfo:
    """Where one chunk sits.

    Attributes:
        chunk: Global chunk id (row of the layout).
        tensor: Index of its tensor in `ChunkLayout.tensors` (the layer id).
        name: Its tensor's state-dict name.
        chunk_in_tensor: Index of the chunk within its tensor.
        offset: Start of the chunk in its tensor's flattened values.
        length: Real values in the chunk (``chunk_size`` except for a tensor's last chunk).
        type: Its tensor's type (see `module_type`); ``type_id`` indexes `ChunkLayout.types`.
        type_id: Integer id of ``type``.
        block: Numeric block index in the name, ``-1`` if none.
        shape: Its tensor's shape.
    """

    chunk: int
    tensor: int
    name: str
    chunk_in_tensor: int
    offset: int
    length: int
    type: str
    type_id: int
    block: int
    shape: tuple[int, ...]


def _positive_int(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"ChunkLayout: {attribute.name} must be a positive integer, got {value!r}")


def _names(include: Sequence[str] | None) -> tuple[str, ...] | None:
    if include is None:
        return None
    if isinstance(include, str):  # a bare string would select its characters
        raise TypeError(f"ChunkLayout: include must be a sequence of tensor names, got the string {include!r}")
    return tuple(include)


def _select(spec: ParamSpec, include: tuple[str, ...] | None) -> tuple[TensorSpec, ...]:
    vector = spec.vector_tensors
    if include is None:
        return vector
    wanted = set(include)
    known = {t.name: t for t in spec.tensors}
    for name in include:
        if name not in known:
            raise KeyError(f"ChunkLayout: include names {name!r}, which is not in the spec (e.g. {spec.names[:3]})")
        t = known[name]
        if t.tied_to is not None:
            raise ValueError(f"ChunkLayout: {name!r} is tied to {t.tied_to!r}; include the stored name instead")
        if t.role != "vector":
            raise ValueError(
                f"ChunkLayout: {name!r} is not a tensor of the weight vector (role={t.role!r}, dtype={t.dtype}); "
                "only floating, selected tensors are chunked"
            )
    return tuple(t for t in vector if t.name in wanted)


@attrs.frozen
class ChunkLayout:
    """Every selected tensor of a spec cut into chunks of ``chunk_size`` (layer-wise).

    Tensors come in spec order; each is split into ``ceil(numel / chunk_size)`` chunks of
    its flattened values, the last one zero-padded (see `mask`). Per chunk the layout
    holds ``(N,)`` ``int64`` tensors, the inputs of a chunk conditioner:

    - ``tensor_ids``: index of the chunk's tensor in `tensors` (the layer id);
    - ``chunk_ids_in_tensor``: the chunk's index within its tensor;
    - ``type_ids``: index of its tensor's type in `types` (see `module_type`);
    - ``block_ids``: numeric block index in its tensor's name (``-1`` if none);
    - ``layer_ids``: the owning module's index in ``spec.layers``;
    - ``offsets`` / ``lengths``: the chunk's slice of its tensor's flattened values.

    ``chunk_starts`` (``(T + 1,)``) holds the global id of each tensor's first chunk and,
    last, `num_chunks`.

    Attributes:
        spec: The architecture.
        chunk_size: Values per chunk (``K``).
        include: Names of the tensors to chunk (e.g. a spectrum selector's choice); they
            must be vector tensors of ``spec``. ``None`` chunks all of them. The layout
            keeps spec order whatever the order of ``include``.
        divisible: Require ``chunk_size`` to divide every selected tensor (no padding);
            a tensor it does not divide raises ``ValueError`` naming it.

    Raises:
        ValueError: ``chunk_size`` is not a positive integer, an included tensor is not a
            vector tensor, or (``divisible=True``) a tensor would need padding.
        KeyError: ``include`` names a tensor the spec does not have.

    Examples:
        >>> import torch
        >>> from paramgen.spec import ParamSpec
        >>> spec = ParamSpec.from_module(torch.nn.Linear(6, 4))  # weight 24, bias 4
        >>> ChunkLayout(spec, 8).num_chunks
        4
        >>> ChunkLayout(spec, 8, divisible=True)
        Traceback (most recent call last):
        ...
        ValueError: ChunkLayout: chunk_size 8 does not divide tensor 'bias' (4 values) and divisible=True
        >>> ChunkLayout(spec, 4, include=["bias"]).chunk(0).name
        'bias'
    """

    spec: ParamSpec
    chunk_size: int = attrs.field(validator=_positive_int)
    include: tuple[str, ...] | None = attrs.field(default=None, kw_only=True, converter=_names)
    divisible: bool = attrs.field(default=False, kw_only=True)

    tensors: tuple[TensorSpec, ...] = attrs.field(init=False, eq=False, repr=False)
    types: tuple[str, ...] = attrs.field(init=False, eq=False, repr=False)
    tensor_ids: torch.Tensor = attrs.field(init=False, eq=False, repr=False)
    chunk_ids_in_tensor: torch.Tensor = attrs.field(init=False, eq=False, repr=False)
    type_ids: torch.Tensor = attrs.field(init=False, eq=False, repr=False)
    block_ids: torch.Tensor = attrs.field(init=False, eq=False, repr=False)
    layer_ids: torch.Tensor = attrs.field(init=False, eq=False, repr=False)
    offsets: torch.Tensor = attrs.field(init=False, eq=False, repr=False)
    lengths: torch.Tensor = attrs.field(init=False, eq=False, repr=False)
    chunk_starts: torch.Tensor = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        k = self.chunk_size
        tensors = _select(self.spec, self.include)
        if not tensors:
            raise ValueError(f"ChunkLayout: include={self.include} selects no tensor")
        if self.divisible:
            for t in tensors:
                if t.numel % k:
                    raise ValueError(
                        f"ChunkLayout: chunk_size {k} does not divide tensor {t.name!r} ({t.numel} values) and divisible=True"
                    )
        type_index: dict[str, int] = {}
        per_tensor_type, per_tensor_block = [], []
        for t in tensors:
            kind, block = module_type(t.name)
            per_tensor_type.append(type_index.setdefault(kind, len(type_index)))
            per_tensor_block.append(block)
        counts = torch.tensor([-(-t.numel // k) for t in tensors], dtype=torch.int64)  # (T,)
        starts = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])  # (T+1,)
        n = int(starts[-1])
        tensor_ids = torch.repeat_interleave(torch.arange(len(tensors)), counts)  # (N,)
        in_tensor = torch.arange(n) - starts[tensor_ids]  # (N,)
        offsets = in_tensor * k
        numels = torch.tensor([t.numel for t in tensors], dtype=torch.int64)
        lengths = torch.clamp(numels[tensor_ids] - offsets, max=k)
        set_ = object.__setattr__  # frozen record: derived fields are set once, here
        set_(self, "tensors", tensors)
        set_(self, "types", tuple(type_index))
        set_(self, "tensor_ids", tensor_ids)
        set_(self, "chunk_ids_in_tensor", in_tensor)
        set_(self, "type_ids", torch.tensor(per_tensor_type, dtype=torch.int64)[tensor_ids])
        set_(self, "block_ids", torch.tensor(per_tensor_block, dtype=torch.int64)[tensor_ids])
        set_(self, "layer_ids", torch.tensor([t.layer for t in tensors], dtype=torch.int64)[tensor_ids])
        set_(self, "offsets", offsets)
        set_(self, "lengths", lengths)
        set_(self, "chunk_starts", starts)

    # ------------------------------------------------------------------ views
    @property
    def num_chunks(self) -> int:
        """Number of chunks ``N`` (rows)."""
        return int(self.chunk_starts[-1])

    @property
    def num_types(self) -> int:
        return len(self.types)

    @property
    def numel(self) -> int:
        """Real values covered (padding excluded)."""
        return sum(t.numel for t in self.tensors)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of chunk values: float32 (exact for fp32/fp16/bf16), float64 if a tensor is."""
        return torch.float64 if any(t.dtype == "float64" for t in self.tensors) else torch.float32

    def tensor_index(self, name: str) -> int:
        """Index of tensor ``name`` in `tensors`."""
        for i, t in enumerate(self.tensors):
            if t.name == name:
                return i
        raise KeyError(f"{name!r} is not chunked by this layout; it has {len(self.tensors)} tensors, e.g. {self.names[:3]}")

    def chunks_of(self, tensor: int | str) -> range:
        """Global ids of one tensor's chunks."""
        i = self.tensor_index(tensor) if isinstance(tensor, str) else tensor
        return range(int(self.chunk_starts[i]), int(self.chunk_starts[i + 1]))

    def chunk(self, chunk_id: int) -> ChunkInfo:
        """Position of chunk ``chunk_id`` as a record."""
        if not 0 <= chunk_id < self.num_chunks:
            raise IndexError(f"chunk id must be in [0, {self.num_chunks}), got {chunk_id}")
        i = int(self.tensor_ids[chunk_id])
        t = self.tensors[i]
        type_id = int(self.type_ids[chunk_id])
        return ChunkInfo(
            chunk=chunk_id,
            tensor=i,
            name=t.name,
            chunk_in_tensor=int(self.chunk_ids_in_tensor[chunk_id]),
            offset=int(self.offsets[chunk_id]),
            length=int(self.lengths[chunk_id]),
            type=self.types[type_id],
            type_id=type_id,
            block=int(self.block_ids[chunk_id]),
            shape=t.shape,
        )

    def mask(self, chunk_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, K)`` bool, ``True`` on real values, for ``chunk_ids`` ``(B,)`` (all chunks if ``None``)."""
        lengths = self.lengths if chunk_ids is None else self.lengths[torch.as_tensor(chunk_ids, dtype=torch.int64).cpu()]
        return torch.arange(self.chunk_size) < lengths.unsqueeze(-1)

    def config(self) -> dict[str, Any]:
        """Constructor arguments besides the spec (JSON-serializable)."""
        return {
            "chunk_size": self.chunk_size,
            "include": None if self.include is None else list(self.include),
            "divisible": self.divisible,
        }
