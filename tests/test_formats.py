"""paramgen.formats: the one home for files on disk (safetensors, PEFT adapter folders,
Hugging Face model folders) and what it may import."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from paramgen.formats import hf, peft
from paramgen.formats.safetensors import CODES, DTYPES, read_header, read_tensors
from paramgen.spec import ParamSpec

ROOT = Path(__file__).resolve().parents[1]


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- safetensors
def test_dtype_table_is_safetensors_own_and_covers_what_a_spec_supports(tmp_path):
    from paramgen.spec import _DTYPES as SPEC_DTYPES

    assert set(DTYPES.values()) == set(SPEC_DTYPES.values())  # one table: every dtype a spec takes, and no other
    assert {code: dtype for dtype, code in CODES.items()} == DTYPES
    for code, dtype in DTYPES.items():  # the codes are the ones safetensors itself writes
        path = tmp_path / f"{code}.safetensors"
        save_file({"x": torch.zeros(3, dtype=dtype)}, str(path))
        entry = read_header(path).tensors["x"]
        assert (entry.code, entry.dtype, entry.dtype_name) == (code, dtype, str(dtype).removeprefix("torch."))


def test_read_header_gives_each_tensors_bytes_and_refuses_damaged_files(tmp_path):
    tensors = {"b": torch.arange(6, dtype=torch.int64).reshape(2, 3), "a": torch.randn(5), "h": torch.randn(2, dtype=torch.float16)}
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path), metadata={"k": "v"})
    header = read_header(path)
    assert header.metadata == {"k": "v"} and set(header.tensors) == set(tensors)
    raw = path.read_bytes()
    for name, x in tensors.items():
        e = header.tensors[name]
        assert e.shape == tuple(x.shape)
        assert raw[e.start : e.stop] == x.contiguous().view(torch.uint8).numpy().tobytes()
    damaged = {
        "short": raw[:5],
        "truncated": raw[:-1],
        "padded": raw + b"\0",
        "not-json": struct.pack("<Q", 4) + b"abcd",
        "huge-header": struct.pack("<Q", 10**12) + raw[8:],
    }
    for name, data in damaged.items():
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(data)
        with pytest.raises(ValueError, match=f"{name}.safetensors"):
            read_header(bad)
    odd = tmp_path / "odd.safetensors"
    blob = json.dumps({"x": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}).encode()
    odd.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0\0")
    entry = read_header(odd).tensors["x"]
    assert entry.dtype_name == "F8_E4M3"  # readable header, a dtype paramgen does not take
    with pytest.raises(TypeError, match="F8_E4M3, expected one of"):
        _ = entry.dtype


def test_read_tensors_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="none.safetensors"):
        read_tensors(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk" * 10)
    with pytest.raises(ValueError, match="junk.safetensors is not a readable safetensors file"):
        read_tensors(tmp_path / "junk.safetensors")


# --------------------------------------------------------------------------- PEFT adapter folders
ADAPTER = {"base_model.model.classifier.weight": torch.ones(2, 4), "base_model.model.classifier.bias": torch.zeros(2)}
CONFIG = {"peft_type": "LORA", "r": 2, "target_modules": {"value", "query"}}


def test_adapter_folder_round_trip_and_names_as_peft_loads_them(tmp_path):
    folder = peft.write_adapter(tmp_path / "ad", ADAPTER, CONFIG)
    assert names(folder) == [peft.ADAPTER_CONFIG, peft.ADAPTER_WEIGHTS] and peft.is_adapter_folder(folder)
    tensors, config = peft.read_adapter(folder)
    assert config == {"peft_type": "LORA", "r": 2, "target_modules": ["query", "value"]}
    assert tensors.keys() == ADAPTER.keys() and all(torch.equal(tensors[k], v) for k, v in ADAPTER.items())
    assert peft.find_head({k: v.shape for k, v in tensors.items()}) == tuple(ADAPTER)
    # older PEFT versions saved the adapter's name in the keys: read as PEFT loads them
    save_file({"base_model.model.classifier.modules_to_save.default.weight": torch.ones(2, 4)}, str(folder / peft.ADAPTER_WEIGHTS))
    assert list(peft.read_adapter(folder)[0]) == ["base_model.model.classifier.weight"]
    with pytest.raises(FileNotFoundError, match="is not a PEFT adapter folder: adapter_model.safetensors is missing"):
        (folder / peft.ADAPTER_WEIGHTS).unlink()
        peft.read_adapter(folder)
    (folder / peft.ADAPTER_CONFIG).write_text("[1]")
    with pytest.raises(ValueError, match="adapter_config.json must hold a JSON object"):
        peft.read_adapter_config(folder)
    with pytest.raises(ValueError, match="peft_type"):
        peft.write_adapter(tmp_path / "x", ADAPTER, {"r": 2})


def test_adapter_folders_are_written_whole(tmp_path, monkeypatch):
    folder = peft.write_adapter(tmp_path / "ad", ADAPTER, CONFIG)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    # an earlier adapter folder is replaced whole
    again = peft.write_adapter(folder, {k: v + 1 for k, v in ADAPTER.items()}, CONFIG)
    assert torch.equal(load_file(str(again / peft.ADAPTER_WEIGHTS))["base_model.model.classifier.bias"], torch.ones(2))
    # a failure once the weights are written (here: writing the config) leaves the old folder as it was
    import paramgen.formats.peft as peft_module

    def broken(path, data):
        raise OSError(28, "No space left on device")

    peft.write_adapter(folder, ADAPTER, CONFIG)
    monkeypatch.setattr(peft_module, "write_json", broken)
    with pytest.raises(OSError, match="No space"):
        peft.write_adapter(folder, {k: v * 7 for k, v in ADAPTER.items()}, CONFIG)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    with pytest.raises(OSError, match="No space"):
        peft.write_adapter(tmp_path / "new", ADAPTER, CONFIG)
    assert names(tmp_path) == ["ad"]  # nothing half-written beside it
    monkeypatch.undo()
    # a folder holding anything else is never touched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match=r"not an empty folder \(it holds \['notes.txt'\]\)"):
        peft.write_adapter(mine, ADAPTER, CONFIG)
    assert names(mine) == ["notes.txt"]


def test_streamed_folders_appear_only_when_complete(tmp_path):
    spec = ParamSpec.from_state_dict({"pooler.dense.weight": torch.zeros(2, 3), "pooler.dense.bias": torch.zeros(2)})
    with pytest.raises(ValueError, match="incomplete"):
        with hf.stream_model(tmp_path / "m", spec.vector_tensors, {"model_type": "bert"}) as w:
            w.write_tensor("pooler.dense.weight", torch.ones(2, 3))
    with pytest.raises(RuntimeError, match="stop"):
        with peft.stream_adapter(tmp_path / "a", spec.vector_tensors, CONFIG) as w:
            w.write_tensor("pooler.dense.weight", torch.ones(2, 3))
            raise RuntimeError("stop")
    assert names(tmp_path) == []
    with hf.stream_model(tmp_path / "m", spec.vector_tensors, {"model_type": "bert", "_name_or_path": "/home/me/bert"}) as w:
        w.write_tensor("pooler.dense.bias", torch.ones(2))  # tensors in any order
        w.write_tensor("pooler.dense.weight", torch.ones(2, 3))
    state, config = hf.read_model(tmp_path / "m")
    assert config == {"model_type": "bert"} and set(state) == {"pooler.dense.weight", "pooler.dense.bias"}
    with pytest.raises(FileExistsError, match="not an empty folder"):  # a streamed folder never replaces one
        with hf.stream_model(tmp_path / "m", spec.vector_tensors, {"model_type": "bert"}):
            pass


def test_sharded_model_folders_read_in_the_index_order(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({"b": torch.ones(2)}, str(folder / "s2.safetensors"))
    save_file({"a": torch.zeros(3)}, str(folder / "s1.safetensors"))
    (folder / hf.MODEL_INDEX).write_text(json.dumps({"weight_map": {"b": "s2.safetensors", "a": "s1.safetensors"}}))
    state, config = hf.read_model(folder)
    assert list(state) == ["b", "a"] and config is None and hf.is_model_folder(folder)
    (folder / hf.MODEL_INDEX).write_text(json.dumps({"weight_map": {"b": "../s2.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="names shard"):
        hf.read_model(folder)
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model folder"):
        hf.read_model(tmp_path)


# --------------------------------------------------------------------------- layering
def imported_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "; import sys; print(' '.join(sorted(sys.modules)))"], capture_output=True, text=True, check=True, cwd=ROOT)
    return {m for m in out.stdout.split() if m.startswith("paramgen")}


def test_formats_sits_at_the_bottom_beside_io_and_spec():
    loaded = imported_after("import paramgen.formats")
    allowed = {"paramgen", "paramgen.io", "paramgen.spec", "paramgen._convert"}
    assert {m for m in loaded if not m.startswith(("paramgen.formats", "paramgen.spec."))} <= allowed


def test_the_zoo_reads_adapter_folders_without_paramgen_lora(tmp_path):
    folder = peft.write_adapter(tmp_path / "ad", ADAPTER, {**CONFIG, "target_modules": ["query"]})
    loaded = imported_after(f"from paramgen.zoo import read_checkpoint; read_checkpoint({str(folder)!r})")
    assert "paramgen.zoo.writer" in loaded and not any(m.startswith("paramgen.lora") for m in loaded)
