"""A damaged or empty zoo fails at once, naming the run and file, never later inside training."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from paramgen.io import file_sha256
from paramgen.spec import NonFiniteWeightsError
from paramgen.zoo import DamagedZooError, EmptyZooError, Zoo, ZooWriter


def _zoo(root, n: int = 3):
    writer = ZooWriter(root)
    for i in range(n):
        net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
        writer.add(net.state_dict(), task=f"t{i % 2}", run_id=f"run{i}", metrics={"test_acc": 0.5})
    return root


@pytest.fixture
def zoo_root(tmp_path):
    return _zoo(tmp_path / "zoo")


def _damage(root, run: str, what: str) -> None:
    manifest, tensors = root / "runs" / f"{run}.json", root / "runs" / f"{run}.safetensors"
    record = json.loads(manifest.read_text())
    if what == "truncated":
        data = tensors.read_bytes()
        tensors.write_bytes(data[: len(data) - 20])
    elif what == "garbage":
        tensors.write_bytes(b"\x00" * 5)
    elif what == "no tensors":
        tensors.unlink()
    elif what == "missing key":
        del record["spec_id"]
        manifest.write_text(json.dumps(record))
    elif what == "bad json":
        manifest.write_text("{")
    elif what == "json list":
        manifest.write_text("[]")
    elif what == "no spec":
        (root / "specs" / f"{record['spec_id']}.json").unlink()
    elif what == "bad spec":
        (root / "specs" / f"{record['spec_id']}.json").write_text('{"layers": []}')
    elif what == "row out of range":
        record["checkpoints"][0]["index"] = 7
        manifest.write_text(json.dumps(record))
    elif what == "renamed":
        record["run_id"] = "someone-else"
        manifest.write_text(json.dumps(record))
    elif what == "other tensors":
        from safetensors.torch import save_file

        save_file({"weight": torch.zeros(1, 2)}, tensors)


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("truncated", "not a readable safetensors file"),
        ("garbage", "not a readable safetensors file"),
        ("no tensors", "no tensors file run1.safetensors"),
        ("missing key", "lacks keys \\['spec_id'\\]"),
        ("bad json", "not valid JSON"),
        ("json list", "expected a JSON object"),
        ("no spec", "architecture file .* is missing"),
        ("bad spec", "unreadable architecture file"),
        ("row out of range", "expected \\(8 or more"),
        ("renamed", "names run 'someone-else'"),
        ("other tensors", "tensors missing \\['0.bias'"),
    ],
)
def test_a_damaged_run_is_named(zoo_root, what, message):
    _damage(zoo_root, "run1", what)
    # A damaged spec file is named with the first run that needs it (all three share it).
    run = "run0" if "spec" in what else "run1"
    with pytest.raises(DamagedZooError, match=f"zoo run '{run}' is damaged \\(.*\\): .*{message}") as info:
        Zoo.open(zoo_root)
    assert f"delete runs/{run}.json" in str(info.value)


def test_damage_after_opening_is_named_on_read(zoo_root):
    zoo = Zoo.open(zoo_root)
    shutil.copy(zoo_root / "runs" / "run0.safetensors", zoo_root / "keep")
    (zoo_root / "runs" / "run2.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(DamagedZooError, match="zoo run 'run2'.*run2.safetensors"):
        zoo.flatten()
    with pytest.raises(DamagedZooError, match="zoo run 'run2'"):
        zoo.state_dict(2)
    (zoo_root / "runs" / "run2.safetensors").unlink()
    with pytest.raises(DamagedZooError, match="zoo run 'run2'.*gone"):
        zoo.state_dict(2)
    assert zoo.state_dict(0)["0.weight"].shape == (4, 3)  # the other runs still serve


def test_empty_zoos_fail_clearly(tmp_path, zoo_root):
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    with pytest.raises(EmptyZooError, match="holds no runs"):
        Zoo.open(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not a zoo folder"):
        Zoo.open(tmp_path / "nothing")
    none = Zoo.open(zoo_root).filter(where=lambda c: False)
    for call in (none.flatten, none.stacked, none.spec):
        with pytest.raises(EmptyZooError, match="holds no checkpoints"):
            call()


def test_nan_weights_in_a_zoo_name_the_checkpoint(zoo_root):
    from safetensors.torch import load_file, save_file

    path = zoo_root / "runs" / "run1.safetensors"
    tensors = load_file(path)
    tensors["0.bias"][0, 2] = float("inf")
    save_file(tensors, path)
    manifest = zoo_root / "runs" / "run1.json"  # as if written so (the writers refuse NaN/Inf)
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "tensors_sha256": file_sha256(path)}))
    with pytest.raises(NonFiniteWeightsError, match="run1@0"):
        Zoo.open(zoo_root).flatten()


def test_changed_tensor_bytes_are_caught_on_read(zoo_root):
    path = zoo_root / "runs" / "run1.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one bit of one weight: the header still parses
    path.write_bytes(bytes(data))
    zoo = Zoo.open(zoo_root)  # headers only: opening stays cheap
    assert zoo.state_dict(0)["0.weight"].shape == (4, 3)  # other runs serve
    for call in (zoo.verify, zoo.flatten, lambda: zoo.state_dict(1)):
        with pytest.raises(DamagedZooError, match="zoo run 'run1' .*bytes changed since it was written"):
            call()
    with pytest.raises(ValueError, match="tensor bytes changed"):
        ZooWriter(zoo_root).add(zoo.state_dict(0), task="t1", run_id="run1")  # nothing appended to damaged data
