"""Layer-wise chunks of a model's tensors, served lazily from safetensors checkpoints.

D2NWG generates large models (LLMs) chunk by chunk (App. A.4): each tensor of each
selected layer is cut into chunks of ``chunk_size`` values, every chunk is one training
sample, and its condition is its position: the chunk's index within its tensor, the
layer (block) index, the layer's type and its shape.

- `ChunkLayout` is that cut as data: per chunk its tensor, its index within the tensor,
  its global id, its offset and length, the tensor's *type* (the name after the numeric
  block index: ``encoder.layer.3.attention.self.query.weight`` has type
  ``attention.self.query.weight``) and block index, exposed as ``int64`` tensors for
  conditioners.
- `ChunkDataset` serves ``(checkpoint, chunk)`` samples from one or many safetensors
  files, reading only each chunk's bytes (a chunk is one contiguous byte range of the
  file), so a zoo of large models never sits in memory; or from in-memory state dicts
  for small models. Given a pinned base (``base=``, `paramgen.base.PinnedBase`), it
  serves the chunks of the deltas ``w - w_base``; ``ChunkDataset.from_zoo`` reads a
  `paramgen.zoo.Zoo`'s run files the same way.
- `spec_from_safetensors` describes a checkpoint from its header without loading its
  floating tensors.

The layout covers the spec's *vector* tensors (floating, untied, selected); integer
buffers, tied copies and frozen tensors are not chunked (see `paramgen.streaming` for
writing them alongside generated tensors).

Examples:
    >>> import torch
    >>> from paramgen.spec import ParamSpec
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> layout = ChunkLayout(ParamSpec.from_module(net), 16)
    >>> layout.num_chunks  # 32 + 8 + 16 + 2 weights -> 2 + 1 + 1 + 1 chunks
    5
    >>> layout.tensor_ids.tolist(), layout.chunk_ids_in_tensor.tolist(), layout.lengths.tolist()
    ([0, 0, 1, 2, 3], [0, 1, 0, 0, 0], [16, 16, 8, 16, 2])
    >>> layout.types, layout.type_ids.tolist()  # Sequential's "0.weight", "2.weight" share a type
    (('weight', 'bias'), [0, 0, 1, 0, 1])
    >>> item = ChunkDataset.from_state_dicts(layout, net.state_dict())[4]
    >>> item["values"].shape, int(item["mask"].sum()), item["tensor"], item["type"]
    (torch.Size([16]), 2, 3, 1)
"""

from paramgen.chunks.dataset import ChunkDataset, spec_from_safetensors
from paramgen.chunks.layout import ChunkInfo, ChunkLayout, module_type

__all__ = [
    "ChunkInfo",
    "ChunkLayout",
    "ChunkDataset",
    "module_type",
    "spec_from_safetensors",
]
