"""build_zoo over tasks of a user's own data (scikit-learn's wine, iris, breast cancer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_iris, load_wine

from paramgen.data import Task, UnknownDatasetError
from paramgen.zoo import RunConfig, TrainConfig, build_zoo, evaluate

TRAIN = TrainConfig(epochs=8, lr=1e-2, batch_size=16)


def _standardized(data):
    x = np.asarray(data.data, dtype=np.float64)
    return (x - x.mean(0)) / x.std(0)


@pytest.fixture(scope="module")
def tasks():
    return [
        Task.from_arrays(name, _standardized(d), d.target, class_names=d.target_names, subject=subject)
        for name, d, subject in (
            ("wine", load_wine(), "chemical analyses of wines"),
            ("iris", load_iris(), "iris flower measurements"),
            ("breast_cancer", load_breast_cancer(), "breast mass measurements"),
        )
    ]


def _run(task: Task, task_name: str | None = None, seed: int = 0) -> RunConfig:
    return RunConfig(task=task_name or task.name, arch="mlp", arch_kwargs={"in_features": task.input_shape[0], "hidden": [16]}, seed=seed, train=TRAIN, keep_epochs=(7, 8))


def test_from_arrays_makes_a_stratified_tabular_task(tasks):
    wine = tasks[0]
    assert wine.modality == "tabular" and wine.input_shape == (13,) and wine.dataset == "wine"
    assert (len(wine.train), len(wine.val), len(wine.test)) == (107, 36, 35)
    assert wine.description == "Classify chemical analyses of wines into 3 classes: class_0, class_1, class_2."
    for split in (wine.train, wine.val, wine.test):  # every class in every split
        assert set(split.y.tolist()) == {0, 1, 2}
    again = Task.from_arrays("wine", _standardized(load_wine()), load_wine().target)
    assert torch.equal(again.test.x, wine.test.x)  # a fixed split, not the global RNG's
    sub = wine.subset([0, 2])
    assert sub.name == "wine/0-2" and sub.class_names == ("class_0", "class_2")
    raw = load_wine()
    scaled = Task.from_arrays("wine", raw.data, raw.target, standardize=True)  # with the train split's statistics
    torch.testing.assert_close(scaled.train.x.mean(0), torch.zeros(13), atol=1e-5, rtol=0)
    torch.testing.assert_close(scaled.train.x.std(0), torch.ones(13), atol=1e-5, rtol=0)
    assert not torch.allclose(scaled.test.x.mean(0), torch.zeros(13), atol=1e-3)  # test statistics were not used


def test_build_zoo_trains_user_tasks_and_their_subsets(tmp_path, tasks):
    wine, iris, cancer = tasks
    plan = [_run(wine), _run(iris), _run(cancer), _run(wine, "wine/0-1")]
    zoo = build_zoo(tmp_path, plan, tasks=tasks, workers=1, progress=False)
    assert zoo.tasks == ("breast_cancer", "iris", "wine", "wine/0-1") and len(zoo) == 8
    for c in zoo.filter(epochs=[8]):
        assert c.metrics["test_acc"] > 0.8, c  # real learning on real data
        task = wine.subset([0, 1]) if c.task == "wine/0-1" else next(t for t in tasks if t.name == c.task)
        assert evaluate(zoo.model(c), task.test)[0] == pytest.approx(c.metrics["test_acc"], abs=1e-9)
    assert set(zoo.digests) == {c.run_id for c in zoo}  # every run's bytes can be checked
    zoo.verify()
    first = zoo.filter(tasks=["wine/0-1"])[0]
    assert first.arch_kwargs["num_classes"] == 2 and first.task_description.startswith("Classify chemical analyses")
    # The manifest records which data a user task held; resuming over changed data is refused.
    changed = Task.from_arrays("wine", _standardized(load_wine())[::-1].copy(), load_wine().target[::-1].copy())
    with pytest.raises(ValueError, match="other data named 'wine'"):
        build_zoo(tmp_path, plan, tasks=[changed, iris, cancer], workers=1, progress=False)
    assert len(build_zoo(tmp_path, plan, tasks=tasks, workers=1, progress=False)) == 8  # same data: resumes


def test_user_tasks_cross_to_worker_processes(tmp_path, tasks):
    iris = tasks[1]
    plan = [_run(iris, seed=0), _run(iris, "iris/1-2", seed=1)]
    zoo = build_zoo(tmp_path, plan, tasks=[iris], workers=2, progress=False)
    in_process = build_zoo(tmp_path / "one", plan, tasks=[iris], workers=1, progress=False)
    assert [c.id for c in zoo] == [c.id for c in in_process]
    for a, b in zip(zoo, in_process, strict=True):  # the same training, wherever it ran
        assert all(torch.equal(x, y) for x, y in zip(zoo.state_dict(a).values(), in_process.state_dict(b).values(), strict=True))


def test_user_task_errors(tmp_path, tasks):
    wine = tasks[0]
    with pytest.raises(UnknownDatasetError, match="Task.from_arrays"):
        build_zoo(tmp_path, [_run(wine)], workers=1, progress=False)  # wine not given
    with pytest.raises(UnknownDatasetError, match="wine has no class 9; valid classes are \\[0, 1, 2\\]"):
        build_zoo(tmp_path, [_run(wine, "wine/0-9")], tasks=[wine], workers=1, progress=False)
    assert not list((tmp_path / "runs").glob("*.json"))
    with pytest.raises(ValueError, match="built-in dataset"):
        build_zoo(tmp_path, [_run(wine)], tasks=[Task.from_arrays("digits", np.zeros((6, 2)), [0, 1] * 3)], workers=1, progress=False)
    with pytest.raises(ValueError, match="two tasks are named 'wine'"):
        build_zoo(tmp_path, [_run(wine)], tasks=[wine, wine], workers=1, progress=False)
    with pytest.raises(ValueError, match="plan is empty"):
        build_zoo(tmp_path, [], workers=1, progress=False)
    with pytest.raises(TypeError, match="tasks=\\[...\\]"):
        RunConfig(task=wine, arch="mlp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="without '/'"):
        Task.from_arrays("a/b", np.zeros((4, 2)), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="labels of shape \\(4,\\)"):
        Task.from_arrays("t", np.zeros((4, 2)), [0, 1, 0])
    with pytest.raises(ValueError, match="integer labels"):
        Task.from_arrays("t", np.zeros((4, 2)), [0.5, 1, 0, 1])
    with pytest.raises(ValueError, match="numeric tensor or array"):
        Task.from_arrays("t", np.zeros((4, 2)), np.array(["a", "b", "a", "b"]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        Task.from_arrays("t", np.full((4, 2), np.nan), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="\\(N, F\\) features"):
        Task.from_arrays("t", np.zeros(4), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="only 1 class names"):
        Task.from_arrays("t", np.zeros((4, 2)), [0, 1, 0, 1], class_names=["a"])
    with pytest.raises(ValueError, match="share one shape"):
        Task.from_splits("t", train=(np.zeros((4, 2)), [0, 1, 0, 1]), val=(np.zeros((2, 3)), [0, 1]), test=(np.zeros((2, 2)), [0, 1]))
