"""assemble (chunks into compact state dicts or streamed files) and the safetensors stream writer."""

from __future__ import annotations

import errno
import json
import os
import struct
import tempfile
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from paramgen.chunks import ChunkDataset, ChunkLayout, spec_from_safetensors
from paramgen.formats.safetensors import SafetensorsStreamWriter, _all_finite
from paramgen.spec import NonFiniteWeightsError, ParamSpec, SpecMismatchError
from paramgen.streaming import assemble

ROOT = Path(__file__).resolve().parents[1]

FLOATS = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def random_state_dict(shapes, dtypes, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {f"blocks.{i}.w": (torch.randn(s, generator=g) * 3).to(d) for i, (s, d) in enumerate(zip(shapes, dtypes, strict=True))}
    sd["blocks.0.count"] = torch.tensor(17)  # integer buffer: an extra, not chunked
    return sd


def batches_of(dataset: ChunkDataset, sizes) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Chunks of checkpoint 0 in layout order, in batches of the given sizes (cycled)."""
    out, i, k, n = [], 0, 0, dataset.layout.num_chunks
    while i < n:
        b = min(sizes[k % len(sizes)], n - i)
        items = [dataset[j] for j in range(i, i + b)]
        out.append((torch.tensor([it["chunk"] for it in items]), torch.stack([it["values"] for it in items])))
        i, k = i + b, k + 1
    return out


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- round trips
@given(
    shapes=st.lists(st.lists(st.integers(1, 7), min_size=0, max_size=3).map(tuple), min_size=1, max_size=5),
    dtypes=st.data(),
    chunk_size=st.integers(1, 40),
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=3),
)
def test_state_dict_to_chunks_to_file_and_dict_is_bit_exact(shapes, dtypes, chunk_size, sizes):
    dts = [dtypes.draw(st.sampled_from(FLOATS)) for _ in shapes]
    sd = random_state_dict(shapes, dts)
    spec = ParamSpec.from_state_dict(sd)
    layout = ChunkLayout(spec, chunk_size)
    assert layout.dtype == (torch.float64 if torch.float64 in dts else torch.float32)
    batches = batches_of(ChunkDataset.from_state_dicts(layout, sd), sizes)
    extras = {"blocks.0.count": sd["blocks.0.count"]}
    built = assemble(layout, batches, extras=extras)
    assert list(built) == [t.name for t in spec.tensors if t.role == "vector"] + ["blocks.0.count"]
    for name, x in built.items():
        assert bits_equal(x, sd[name]), name
        if x.numel():
            assert x.untyped_storage().nbytes() == x.numel() * x.element_size()  # compact, padding dropped
    with tempfile.TemporaryDirectory() as folder:
        path = assemble(layout, batches, out=Path(folder) / "m.safetensors", extras=extras)
        loaded = load_file(path)
        assert set(loaded) == set(sd)
        assert all(bits_equal(loaded[k], sd[k]) for k in sd)
        # the file serves the same chunks back
        again = assemble(layout, batches_of(ChunkDataset(layout, path, strict=False), [7]))
        assert all(bits_equal(again[k], sd[k]) for k in again)
        assert leftovers(Path(folder)) == ["m.safetensors"]


def test_file_format_header_alignment_and_metadata(tmp_path):
    sd = {"a.half": torch.randn(3, dtype=torch.float16), "b.float": torch.randn(5), "c.bf": torch.randn(1, dtype=torch.bfloat16)}
    tensors = ParamSpec.from_state_dict(sd).vector_tensors
    path = tmp_path / "m.safetensors"
    with SafetensorsStreamWriter(path, tensors, metadata={"generator": "d2nwg"}, extras={"n": torch.tensor([1, 2], dtype=torch.int64)}) as w:
        for name, x in sd.items():
            w.write_tensor(name, x.float())  # generated values are float32; the writer casts
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0 and raw[8 + n - 1 : 8 + n] in (b"}", b" ")
    header = json.loads(raw[8 : 8 + n])
    assert header.pop("__metadata__") == {"format": "pt", "generator": "d2nwg"}
    assert {k: v["dtype"] for k, v in header.items()} == {"a.half": "F16", "b.float": "F32", "c.bf": "BF16", "n": "I64"}
    spans = sorted(tuple(v["data_offsets"]) for v in header.values())
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in pairwise(spans)) and spans[-1][1] == len(raw) - 8 - n
    for v in header.values():  # every tensor aligned to its item size
        assert v["data_offsets"][0] % {"F16": 2, "BF16": 2, "F32": 4, "I64": 8}[v["dtype"]] == 0
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "generator": "d2nwg"}
    loaded = load_file(path)
    assert all(bits_equal(loaded[k], v) for k, v in sd.items())
    assert loaded["n"].tolist() == [1, 2]
    assert spec_from_safetensors(path).numel == 3 + 5 + 1


def test_same_content_gives_the_same_bytes(tmp_path):
    sd = {"w": torch.randn(3, 5, generator=torch.Generator().manual_seed(0))}
    tensors = ParamSpec.from_state_dict(sd).vector_tensors
    files = []
    for i, meta in enumerate(({"seed": "1", "cond": "a"}, {"cond": "a", "seed": "1"})):
        files.append(tmp_path / f"{i}.safetensors")
        with SafetensorsStreamWriter(files[-1], tensors, metadata=meta) as w:
            w.write_tensor("w", sd["w"])
    assert files[0].read_bytes() == files[1].read_bytes()
    (n,) = struct.unpack("<Q", files[0].read_bytes()[:8])
    assert list(json.loads(files[0].read_bytes()[8 : 8 + n])["__metadata__"]) == ["cond", "format", "seed"]


def test_write_tensor_then_runs_and_float_rounding(tmp_path):
    sd = {"w": torch.zeros(2, 3, dtype=torch.bfloat16), "b": torch.zeros(5, dtype=torch.float16)}
    w = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 1.00390625]])  # last: halfway in bf16 -> rounds to even (1.0)
    with SafetensorsStreamWriter(tmp_path / "m.safetensors", ParamSpec.from_state_dict(sd).vector_tensors) as writer:
        writer.write("b", torch.tensor([1.0, 2, 3, 4]))  # tensors in any order, a tensor's runs in order
        writer.write_tensor("w", w)
        writer.write("b", torch.tensor([1 / 3]), start=4)
    out = load_file(tmp_path / "m.safetensors")
    assert bits_equal(out["w"], w.to(torch.bfloat16))
    assert out["w"][1, 2].item() == 1.0
    assert bits_equal(out["b"], torch.tensor([1.0, 2, 3, 4, 1 / 3]).to(torch.float16))


# --------------------------------------------------------------------------- ordering and completeness
@pytest.fixture
def small():
    sd = {"x": torch.randn(10), "y": torch.randn(3, 3)}
    layout = ChunkLayout(ParamSpec.from_state_dict(sd), 4)  # x: 3 chunks, y: 3 chunks
    return layout, batches_of(ChunkDataset.from_state_dicts(layout, sd), [2])


@pytest.mark.parametrize("out", [None, "file"])
@pytest.mark.parametrize(
    ("mangle", "match"),
    [
        (lambda b: [b[0], b[2], b[1]], "expected chunk 2, got 4"),
        (lambda b: [b[0], b[0], b[1], b[2]], "expected chunk 2, got 0"),
        (lambda b: [(b[0][0].flip(0), b[0][1])] + b[1:], "expected chunk 0, got 1"),
        (lambda b: b[:2], "2 of 6 chunks were never written, starting with chunk 4 \\(chunk 1 of 'y'\\)"),
        (lambda b: b + [(torch.tensor([6]), torch.zeros(1, 4))], "past the layout's last chunk"),
        (lambda b: [(b[0][0], b[0][1][:, :3])] + b[1:], "expected values of shape \\(2, 4\\)"),
    ],
)
def test_out_of_order_missing_or_malformed_chunks_raise_and_leave_nothing(small, tmp_path, out, mangle, match):
    layout, batches = small
    target = None if out is None else tmp_path / "m.safetensors"
    with pytest.raises((ValueError, SpecMismatchError), match=match):
        assemble(layout, mangle(batches), out=target)
    assert leftovers(tmp_path) == []


def test_writer_checks_names_shapes_and_the_order_of_runs(tmp_path):
    tensors = ParamSpec.from_state_dict({"x": torch.zeros(10), "y": torch.zeros(3, 3)}).vector_tensors
    cases = [
        (lambda w: w.write_tensor("z", torch.zeros(2)), KeyError, "'z' is not a tensor of this file"),
        (lambda w: w.write_tensor("x", torch.zeros(9)), SpecMismatchError, "expected shape \\(10,\\)"),
        (lambda w: (w.write("x", torch.zeros(4)), w.write_tensor("x", torch.zeros(10))), ValueError, "written already \\(4 of 10"),
        (lambda w: w.write("x", torch.zeros(4), start=2), ValueError, "expected a run from value 0, got one from 2"),
        (lambda w: (w.write("x", torch.zeros(4)), w.write("x", torch.zeros(4), start=6)), ValueError, "from value 4, got one from 6"),
        (lambda w: w.write("x", torch.zeros(11)), ValueError, "a run of 11 from value 0 goes past its end"),
        (lambda w: w.write("x", torch.zeros(2, 2)), SpecMismatchError, "flat values"),
        (lambda w: w.write("x", torch.zeros(4, dtype=torch.int64)), TypeError, "floating values"),
        (lambda w: w.write("x", torch.tensor([0.0, float("nan")])), NonFiniteWeightsError, "'x'"),
        (lambda w: w.write_tensor("x", torch.zeros(10)), ValueError, "incomplete: 1 of 2 tensors .* 'y' \\(9 values missing\\)"),
    ]
    for act, error, match in cases:
        with pytest.raises(error, match=match):
            with SafetensorsStreamWriter(tmp_path / "m.safetensors", tensors) as w:
                act(w)
        assert leftovers(tmp_path) == [], match


def test_non_finite_values_raise_and_leave_nothing(small, tmp_path):
    layout, batches = small
    bad = [(ids, v.clone()) for ids, v in batches]
    bad[2][1][0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="'y'"):
        assemble(layout, bad, out=tmp_path / "m.safetensors")
    assert leftovers(tmp_path) == []
    bad[2][1][0, 0] = 0.0
    bad[2][1][1, 3] = float("inf")  # padding of y's last chunk: ignored
    assert assemble(layout, bad)["y"].isfinite().all()


def test_existing_target_survives_a_failed_write(small, tmp_path):
    layout, batches = small
    target = tmp_path / "m.safetensors"
    save_file({"old": torch.ones(2)}, target)
    with pytest.raises(ValueError):
        assemble(layout, batches[:1], out=target)
    assert leftovers(tmp_path) == ["m.safetensors"] and list(load_file(target)) == ["old"]


def test_writer_misuse(small, tmp_path):
    layout, batches = small
    with pytest.raises(ValueError, match="clash"):
        SafetensorsStreamWriter(tmp_path / "m.safetensors", layout.tensors, extras={"x": torch.zeros(1)})
    with pytest.raises(TypeError, match="metadata"):
        SafetensorsStreamWriter(tmp_path / "m.safetensors", layout.tensors, metadata={"a": 1})
    with pytest.raises(TypeError, match="TensorSpec"):
        SafetensorsStreamWriter(tmp_path / "m.safetensors", layout)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only stored in files"):
        assemble(layout, batches, metadata={"a": "b"})
    writer = SafetensorsStreamWriter(tmp_path / "m.safetensors", layout.tensors)
    writer.write_tensor("x", torch.zeros(10))
    writer.write_tensor("y", torch.zeros(3, 3))
    assert writer.close() == tmp_path / "m.safetensors"
    with pytest.raises(ValueError, match="closed"):
        writer.write("x", torch.zeros(1))
    writer.abort()  # after close: harmless, keeps the finished file
    assert leftovers(tmp_path) == ["m.safetensors"]


# --------------------------------------------------------------------------- full disk
def test_full_disk_midway_leaves_no_file(small, tmp_path, disk_full_at_write):
    layout, batches = small
    calls = disk_full_at_write(3)  # header, first batch, then the disk is full
    with pytest.raises(OSError) as err:
        assemble(layout, batches, out=tmp_path / "m.safetensors")
    assert err.value.errno == errno.ENOSPC and len(calls) == 3
    assert leftovers(tmp_path) == []


def test_full_disk_at_reservation_leaves_no_file(small, tmp_path, monkeypatch):
    layout, batches = small

    def fallocate(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    with pytest.raises(OSError, match="No space"):
        SafetensorsStreamWriter(tmp_path / "m.safetensors", layout.tensors)
    assert leftovers(tmp_path) == []


def test_unsupported_reservation_is_ignored(small, tmp_path, monkeypatch):
    layout, batches = small

    def fallocate(fd, offset, size):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    path = assemble(layout, batches, out=tmp_path / "m.safetensors")
    assert set(load_file(path)) == {"x", "y"}


def test_fsync_failure_leaves_no_file(small, tmp_path, monkeypatch):
    layout, batches = small

    def fsync(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="I/O error"):
        assemble(layout, batches, out=tmp_path / "m.safetensors")
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- memory
def test_peak_rss_growth_sees_a_transient_allocation():
    # In a fresh process: in this warm one, memory the allocator kept from earlier tests
    # can serve the allocation without any growth (the docstring says so).
    import subprocess
    import sys

    code = (
        "import torch; from benchmarks.common import peak_rss_growth; "
        "_, grew = peak_rss_growth(lambda: torch.ones(2**24).sum()); "  # 64 MiB, freed before returning
        "_, idle = peak_rss_growth(lambda: None); print(grew, idle)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, cwd=ROOT)
    grew, idle = map(int, out.stdout.split())
    assert grew >= 56 * 2**20
    assert idle < 8 * 2**20


_BUDGET_SCRIPT = """
import json, sys, torch
from safetensors import safe_open
from paramgen.chunks import ChunkLayout
from paramgen.spec import ParamSpec
from benchmarks.common import peak_rss_growth
from paramgen.streaming import assemble

torch.set_num_threads(1)
mode, path = sys.argv[1], sys.argv[2]
shapes = {f"layers.{i}.{kind}.weight": (2048, 2048) for i in range(12) for kind in ("q", "k")}
shapes["embed.weight"] = (32003, 128)  # not a multiple of the chunk size: a padded last chunk
spec = ParamSpec.from_state_dict({k: torch.empty(s, device="meta") for k, s in shapes.items()})
layout = ChunkLayout(spec, 4096)

def batches():  # the "generator": each batch made on demand from its own seed
    for i, start in enumerate(range(0, layout.num_chunks, 1024)):
        ids = torch.arange(start, min(start + 1024, layout.num_chunks))
        yield ids, torch.randn(len(ids), 4096, generator=torch.Generator().manual_seed(i))

if mode == "file":
    _, grew = peak_rss_growth(assemble, layout, batches(), out=path)
else:
    built, grew = peak_rss_growth(assemble, layout, batches())
    with safe_open(path, framework="pt") as f:
        assert all(torch.equal(f.get_tensor(name), built[name]) for name in layout.names)
print(json.dumps({"numel": layout.numel, "grew": grew}))
"""


@pytest.mark.slow
def test_100m_model_streams_within_memory_budgets(tmp_path):
    """Streaming 100M generated parameters to disk grows peak RSS by <= 0.25x their fp32 size;
    assembling them in memory by <= 1.5x (batches of 1024 chunks of 4096).

    Each measurement runs in a fresh process: in a warm one, memory freed by earlier
    work and kept by the allocator hides part of the growth.
    """
    import subprocess
    import sys

    path = tmp_path / "big.safetensors"
    ratios = {}
    for mode in ("file", "dict"):  # dict also checks the file against the in-memory result
        done = subprocess.run(
            [sys.executable, "-c", _BUDGET_SCRIPT, mode, str(path)], capture_output=True, text=True, timeout=600, cwd=ROOT
        )
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["numel"] > 100_000_000
        ratios[mode] = result["grew"] / (4 * result["numel"])
    print(f"\npeak RSS growth / fp32 size of {result['numel'] / 1e6:.1f}M params: stream to file {ratios['file']:.3f}x, "
          f"in-memory assembly {ratios['dict']:.3f}x")
    assert ratios["file"] <= 0.25
    assert ratios["dict"] <= 1.5
    with path.open("rb") as f:
        assert path.stat().st_size == 8 + struct.unpack("<Q", f.read(8))[0] + 4 * result["numel"]

@pytest.mark.parametrize(
    ("x", "finite"),
    [
        (torch.tensor([1.0, 2.0]), True),
        (torch.full((10,), 3e38), True),  # the sum overflows; the exact check clears it
        (torch.ones(70_000, dtype=torch.float16), True),  # fp16 sum overflows too
        (torch.tensor([1.0, float("nan")]), False),
        (torch.tensor([float("inf"), -float("inf")]), False),
        (torch.tensor([-float("inf"), 1.0]), False),
    ],
)
def test_finite_check_is_exact(x, finite):
    assert _all_finite(x) is finite
