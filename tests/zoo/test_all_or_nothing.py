"""Writing into a zoo is all or nothing: every source is checked before anything is written,
and a failure (a bad file, another architecture, a failed rename) leaves the zoo as it was."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from safetensors.torch import save_file

from paramgen.data import Task
from paramgen.spec import SpecMismatchError
from paramgen.zoo import RunConfig, TrainConfig, Zoo, ZooWriter, build_zoo, import_checkpoints
from paramgen.zoo import writer as writer_module

SHAPES = {"0.weight": (8, 4), "0.bias": (8,), "2.weight": (3, 8), "2.bias": (3,)}


def _files(folder, n: int, *, shapes=SHAPES, start: int = 0) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(start)
    paths = []
    for i in range(start, start + n):
        paths.append(folder / f"m{i}.safetensors")
        save_file({k: torch.randn(s, generator=g) for k, s in shapes.items()}, str(paths[-1]))
    return paths


def _listing(root) -> dict[str, str]:
    """Every file and folder under ``root`` with the digest of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir" for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def zoo_root(tmp_path):
    root = tmp_path / "zoo"
    import_checkpoints(root, _files(tmp_path / "first", 2), tasks="wine")
    return root


def test_a_bad_last_file_leaves_the_zoo_byte_identical(tmp_path, zoo_root):
    before = _listing(zoo_root)
    good = _files(tmp_path / "more", 3, start=10)
    bad = tmp_path / "more" / "torn.safetensors"
    bad.write_bytes(b"torn")
    with pytest.raises(ValueError, match=r"torn.safetensors is not a readable safetensors file"):
        import_checkpoints(zoo_root, [*good, bad], tasks="wine")
    assert _listing(zoo_root) == before  # no runs of the good files, no leftovers


def test_the_command_line_import_is_all_or_nothing(tmp_path, zoo_root, capsys):
    from paramgen.cli import main

    before = _listing(zoo_root)
    good = _files(tmp_path / "more", 3, start=10)
    (tmp_path / "more" / "torn.safetensors").write_bytes(b"torn")
    assert main(["-q", "zoo", "import", *map(str, good), str(tmp_path / "more" / "torn.safetensors"), "--task", "wine", "--out", str(zoo_root), "--no-progress"]) == 2
    assert "torn.safetensors is not a readable safetensors file" in capsys.readouterr().err
    assert _listing(zoo_root) == before
    wide = _files(tmp_path / "wide", 1, shapes={**SHAPES, "0.weight": (8, 5)})
    assert main(["-q", "zoo", "import", *map(str, good), *map(str, wide), "--task", "wine", "--out", str(tmp_path / "fresh"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "m0.safetensors is another architecture than checkpoint" in err and "expected shape (8, 4)" in err and "got shape (8, 5)" in err
    assert not (tmp_path / "fresh").exists()
    code = main(["-q", "zoo", "import", *map(str, good), *map(str, wide), "--task", "wine", "--mixed-architectures", "--out", str(tmp_path / "fresh"), "--no-progress"])
    assert code == 0 and len(Zoo.open(tmp_path / "fresh").spec_ids) == 2


def test_a_failed_import_creates_no_zoo_folder(tmp_path):
    good = _files(tmp_path / "src", 2)
    (tmp_path / "src" / "nan.safetensors").write_bytes(b"")
    save_file({k: torch.full(s, float("nan")) for k, s in SHAPES.items()}, str(tmp_path / "src" / "nan.safetensors"))
    target = tmp_path / "new" / "zoos" / "mine"
    with pytest.raises(ValueError, match=r"checkpoint .*nan.safetensors: weights contain NaN or Inf"):
        import_checkpoints(target, [*good, tmp_path / "src" / "nan.safetensors"], tasks="wine")
    assert not (tmp_path / "new").exists()  # neither the zoo nor the folders above it
    zoo = import_checkpoints(target, good, tasks="wine")  # the good ones alone go in
    assert len(zoo) == 2 and sorted(p.name for p in target.iterdir()) == ["runs", "specs"]


def test_mismatched_shapes_are_refused_at_import_naming_both(tmp_path, zoo_root):
    before = _listing(zoo_root)
    wide = _files(tmp_path / "wide", 1, shapes={**SHAPES, "0.weight": (8, 5)})
    with pytest.raises(SpecMismatchError, match=r"m0.safetensors is another architecture than the zoo's run wine__\w+: '0.weight' expected shape \(8, 4\) .*got shape \(8, 5\)"):
        import_checkpoints(zoo_root, wide, tasks="wine")
    assert _listing(zoo_root) == before
    # Within one import: the second file differs from the first.
    pair = [*_files(tmp_path / "a", 1), *_files(tmp_path / "b", 1, shapes={**SHAPES, "2.weight": (4, 8), "2.bias": (4,)})]
    with pytest.raises(SpecMismatchError, match=r"b/m0.safetensors is another architecture than checkpoint .*a/m0.safetensors: '2.weight' expected shape \(3, 8\).*got shape \(4, 8\)"):
        import_checkpoints(tmp_path / "z2", pair, tasks="t")
    assert not (tmp_path / "z2").exists()
    zoo = import_checkpoints(tmp_path / "z2", pair, tasks="t", mixed_architectures=True)  # a family, when asked for
    assert len(zoo.spec_ids) == 2


def test_the_same_tensors_in_another_order_are_one_architecture(tmp_path):
    """A module's state dict and the safetensors file of the same model: one spec id."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    head_first = {k: net.state_dict()[k] for k in ("2.bias", "2.weight", "0.bias", "0.weight")}
    writer = ZooWriter(tmp_path / "zoo")
    a = writer.add(net, task="t")
    b = writer.add(head_first, task="t", run_id="other-order")
    save_file(dict(net.state_dict()), str(tmp_path / "net.safetensors"))
    c = writer.add(tmp_path / "net.safetensors", task="t", run_id="from-file")
    assert a.spec_id == b.spec_id == c.spec_id
    zoo = Zoo.open(tmp_path / "zoo")
    flat, _ = zoo.flatten()  # one architecture: the whole zoo in one call, in the first run's layout
    assert torch.equal(flat[0], flat[1]) and torch.equal(flat[0], flat[2])


def test_epochs_of_one_run_are_written_together_or_not_at_all(tmp_path, zoo_root):
    before = _listing(zoo_root)
    files = _files(tmp_path / "epochs", 3, start=20)
    with pytest.raises(ValueError, match="already holds epoch 1"):
        ZooWriter(zoo_root).add_all([(files[0], {"task": "wine", "run_id": "long", "epoch": 1}), (files[1], {"task": "wine", "run_id": "long", "epoch": 1})])
    assert _listing(zoo_root) == before
    added = ZooWriter(zoo_root).add_all([(f, {"task": "wine", "run_id": "long"}) for f in files])
    assert [c.id for c in added] == ["long@0", "long@1", "long@2"]
    assert [c.epoch for c in Zoo.open(zoo_root).filter(where=lambda c: c.run_id == "long")] == [0, 1, 2]


def test_a_failure_while_renaming_puts_every_file_back(tmp_path, zoo_root, monkeypatch):
    """A failed rename midway through the commit (a fault injected into os.replace, as a full
    or vanished disk would cause) restores the files already replaced and removes the new ones."""
    writer = ZooWriter(zoo_root)
    files = _files(tmp_path / "epochs", 2, start=30)
    writer.add(files[0], task="wine", run_id="long")
    before = _listing(zoo_root)
    real, committed = os.replace, []

    def failing(src, dst):
        # The last rename of the commit: the new run's manifest, after the tensor files of
        # 'long' (replaced) and of the new run (created), and the manifest of 'long' (replaced).
        committing = os.path.basename(os.path.dirname(src)).startswith(".import-")
        if committing and os.path.dirname(dst) == str(zoo_root / "runs") and str(dst).endswith(".json") and os.path.basename(dst) != "long.json":
            raise OSError(28, "No space left on device")
        if committing:
            committed.append(os.path.basename(dst))
        return real(src, dst)

    monkeypatch.setattr(writer_module.os, "replace", failing)
    with pytest.raises(OSError, match="No space left"):
        writer.add_all([(files[1], {"task": "wine", "run_id": "long"}), (_files(tmp_path / "x", 1, start=40)[0], {"task": "wine"})])
    monkeypatch.undo()
    assert {"long.safetensors", "long.json"} <= set(committed)  # replaced before the failure, and put back
    assert _listing(zoo_root) == before
    assert [c.id for c in Zoo.open(zoo_root) if c.run_id == "long"] == ["long@0"]
    assert writer.add(files[1], task="wine", run_id="long").id == "long@1"  # the writer's view was left as it was too


def test_build_checks_every_run_before_creating_anything(tmp_path):
    toy = Task.from_arrays("toy", torch.randn(60, 4, generator=torch.Generator().manual_seed(0)), torch.arange(60) % 2)
    train = TrainConfig(epochs=1, batch_size=16)
    plan = [RunConfig(task="toy", arch="mlp", arch_kwargs={"in_features": 4, "hidden": [4]}, train=train, keep_epochs=(1,)),
            RunConfig(task="toy", arch="mlp", arch_kwargs={"in_features": 4, "hiden": [4]}, train=train, keep_epochs=(1,))]  # fmt: skip
    with pytest.raises(ValueError, match=r"run toy__mlp__s0__\w+: cannot build architecture 'mlp' with \{'in_features': 4, 'hiden': \[4\]\}"):
        build_zoo(tmp_path / "new" / "zoo", plan, tasks=[toy], workers=1, progress=False)
    assert not (tmp_path / "new").exists()
    mlp = {"in_features": 4, "hidden": [4]}
    unknown = [RunConfig(task="toy", arch="mlp", arch_kwargs=mlp, train=train, keep_epochs=(1,)), RunConfig(task="nowhere", arch="mlp", arch_kwargs=mlp, train=train, keep_epochs=(1,))]
    with pytest.raises(ValueError, match="'nowhere' is neither a built-in dataset"):
        build_zoo(tmp_path / "new" / "zoo", unknown, tasks=[toy], workers=1, progress=False)
    assert not (tmp_path / "new").exists()
