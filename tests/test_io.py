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


def test_atomic_folder_writes_whole_or_leaves_the_old_one(tmp_path, monkeypatch):
    import os

    import pytest

    from paramgen.io import atomic_folder

    target = tmp_path / "out"
    with atomic_folder(target) as tmp:
        (tmp / "a").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(RuntimeError):
        with atomic_folder(target, replaces={"a"}) as tmp:
            (tmp / "a").write_text("2")
            raise RuntimeError("midway")
    assert (target / "a").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # the swap itself fails after the old folder was moved aside: it is put back
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError(5, "I/O error")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="I/O error"):
        with atomic_folder(target, replaces={"a"}) as tmp:
            (tmp / "a").write_text("3")
    monkeypatch.undo()
    assert (target / "a").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(FileExistsError, match="holds \\['a'\\]"):  # not listed in replaces: never touched
        with atomic_folder(target):
            pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is not a folder"):
        with atomic_folder(tmp_path / "file"):
            pass
