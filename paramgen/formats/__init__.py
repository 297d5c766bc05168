"""Files on disk: the one home for the formats paramgen reads and writes besides its own.

- `paramgen.formats.safetensors`: the safetensors dtype table (`~paramgen.formats.safetensors.DTYPES`),
  headers read without the tensors, whole reads, and the stream writer that writes a
  large model piece by piece.
- `paramgen.formats.peft`: PEFT adapter folders (``adapter_model.safetensors`` +
  ``adapter_config.json``), read, written whole or streamed.
- `paramgen.formats.hf`: Hugging Face model folders (``model.safetensors`` or its shards +
  ``config.json``), read or streamed.

Every write is all or nothing: a file or a folder is built under a temporary name beside
its target and renamed into place when complete (`paramgen.io`). This package sits at the
bottom of the library, beside `paramgen.io` and `paramgen.spec`: it knows files, not
generators, zoos or LoRA setups.

Examples:
    >>> from paramgen.formats import peft, safetensors
    >>> safetensors.DTYPES["BF16"], peft.ADAPTER_CONFIG
    (torch.bfloat16, 'adapter_config.json')
"""

from paramgen.formats import hf, peft, safetensors

__all__ = ["hf", "peft", "safetensors"]
