"""Zoo building (resumable, atomic), storage and lazy serving on real data."""

from __future__ import annotations

import json

import pytest
import torch

from paramgen.data import get_task
from paramgen.normalize import PerTaskZScore
from paramgen.vectorize import ChunkVectorizer, LayerVectorizer
from paramgen.zoo import RunConfig, TrainConfig, WeightDataset, Zoo, build_zoo, evaluate, preset


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return build_zoo(root, preset("tiny"), workers=2, progress=False)


def test_tiny_zoo_holds_real_held_out_metrics(tiny_zoo):
    assert len(tiny_zoo) == 8 and len(tiny_zoo.tasks) == 4
    for c in tiny_zoo:
        assert set(c.metrics) == {f"{s}_{m}" for s in ("train", "val", "test") for m in ("acc", "loss")}
    # The recorded test accuracy is what the stored weights score on the task's test split.
    c = tiny_zoo.filter(epochs=[3])[0]
    task = get_task(c.task)
    acc, _ = evaluate(tiny_zoo.model(c), task.test)
    assert acc == pytest.approx(c.metrics["test_acc"], abs=1e-9)
    assert tiny_zoo.summary()["test_acc_mean"] > 0.4  # 5 classes: chance is 0.2


def test_manifest_records_what_a_generator_conditions_on(tiny_zoo):
    c = tiny_zoo[0]
    assert c.task_description.startswith("Classify 8x8")
    assert c.arch == "convnet" and c.arch_kwargs["num_classes"] == 5
    assert "conv" in c.arch_description and c.hyperparameters["epochs"] == 3
    assert c.spec_id == tiny_zoo.spec().fingerprint


def test_lazy_items_equal_the_fast_path(tiny_zoo):
    spec = tiny_zoo.spec()
    flat, extras = tiny_zoo.flatten()
    assert flat.shape == (8, spec.numel)
    norm = PerTaskZScore().fit(flat, tasks=[c.task for c in tiny_zoo])
    ds = WeightDataset(tiny_zoo, LayerVectorizer(spec, chunk_size=32), normalizer=norm)
    everything = ds.all()
    for i in range(len(ds)):
        item = ds[i]
        assert torch.equal(item["values"], everything[i])
        assert item["task"] == tiny_zoo[i].task and item["mask"].shape == item["values"].shape
    # Round trip through the zoo: stored tensors give back the checkpoint's state dict.
    sd = tiny_zoo.state_dict(5)
    again = spec.unflatten(flat[5], extras={k: v[5:6] for k, v in extras.items()})[0]
    assert all(torch.equal(sd[k], again[k]) for k in sd)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_build_resumes_without_duplicates_or_partial_files(tmp_path):
    plan = preset("tiny")[:3]
    build_zoo(tmp_path, plan[:1], workers=1, progress=False)
    first = (tmp_path / "runs" / f"{plan[0].run_id}.safetensors").read_bytes()

    # An interrupted build: tensors written but no manifest, plus a stray temp file.
    (tmp_path / "runs" / f"{plan[1].run_id}.safetensors").write_bytes(b"half")
    (tmp_path / "runs" / "x.json.abc.tmp").write_text("{")

    class Interrupt:
        calls = 0

        def log_metrics(self, metrics, *, step=None):
            Interrupt.calls += 1
            raise KeyboardInterrupt

        def log_params(self, params): ...
        def log_artifact(self, path): ...
        def close(self): ...

    with pytest.raises(KeyboardInterrupt):
        build_zoo(tmp_path, plan, workers=1, progress=False, tracker=Interrupt())
    assert Interrupt.calls == 1  # stopped after the first new run was written
    zoo = build_zoo(tmp_path, plan, workers=1, progress=False)
    assert len(zoo) == 6 and len({c.id for c in zoo}) == 6
    assert not list(tmp_path.rglob("*.tmp"))
    assert (tmp_path / "runs" / f"{plan[0].run_id}.safetensors").read_bytes() == first  # not retrained
    for p in (tmp_path / "runs").glob("*.json"):
        json.loads(p.read_text())
    Zoo.open(tmp_path).flatten()  # every file readable


def test_errors(tmp_path, tiny_zoo):
    with pytest.raises(FileNotFoundError, match="not a zoo folder"):
        Zoo.open(tmp_path / "nothing")
    with pytest.raises(ValueError, match="unknown zoo preset"):
        preset("huge")
    with pytest.raises(KeyError, match="not in this zoo"):
        tiny_zoo.filter(tasks=["digits/0-1"])
    with pytest.raises(ValueError, match="num_classes"):
        RunConfig(task="digits/0-1", arch="mlp", arch_kwargs={"num_classes": 2})
    with pytest.raises(ValueError, match="keep_epochs"):
        RunConfig(task="digits/0-1", arch="mlp", train=TrainConfig(epochs=2), keep_epochs=(3,))
    with pytest.raises(ValueError, match="repeats"):
        build_zoo(tmp_path / "z", [preset("tiny")[0]] * 2, workers=1, progress=False)
    other = ChunkVectorizer(__import__("paramgen").ParamSpec.from_module(torch.nn.Linear(2, 2)), chunk_size=4)
    with pytest.raises(ValueError, match="another architecture"):
        WeightDataset(tiny_zoo, other)
