"""paramgen.io: atomic writes, and safetensors files whose bytes depend only on their content."""

from __future__ import annotations

import json
import struct

import torch
from safetensors.torch import load_file

from paramgen.io import save_safetensors


def header(path) -> dict:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n])


def test_identical_inputs_give_identical_bytes_whatever_the_metadata_order(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"b": torch.randn(3, 4, generator=g), "a": torch.arange(5), "c": torch.randn(2, generator=g).half()}
    meta = {"format": "pt", "cond": "digits/0-2-4-6-7", "seed": "1", "spec_id": "abc"}
    files = []
    for i in range(8):  # safetensors' hash map ordered the metadata differently from call to call
        order = list(meta.items())[i % 4 :] + list(meta.items())[: i % 4]
        files.append(tmp_path / f"{i}.safetensors")
        save_safetensors(files[-1], tensors, metadata=dict(order))
    first = files[0].read_bytes()
    assert all(f.read_bytes() == first for f in files[1:])
    assert list(header(files[0])["__metadata__"]) == sorted(meta)
    back = load_file(str(files[0]))
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], v) for k, v in tensors.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in files)  # no temporary file left


def test_without_metadata_and_with_one_key(tmp_path):
    for meta in (None, {"format": "pt"}):
        a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
        save_safetensors(a, {"w": torch.ones(2)}, metadata=meta)
        save_safetensors(b, {"w": torch.ones(2)}, metadata=meta)
        assert a.read_bytes() == b.read_bytes()
        assert torch.equal(load_file(str(a))["w"], torch.ones(2))
