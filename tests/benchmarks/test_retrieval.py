"""The retrieval harness: a tiny end-to-end run, and the condition is drawn from training examples only."""

from __future__ import annotations

import attrs
import pytest
import torch

from benchmarks import retrieval
from paramgen.data import Split, get_task
from tests.benchmarks.test_harnesses import methods, run


def test_retrieval_harness(tmp_path, monkeypatch):
    tiny = dict(image=dict(zoo="tiny-img", tasks_per_dataset=1, seeds=(0,), zoo_epochs=2, keep_epochs=(1, 2), fashion_train_per_class=20),
                signal=dict(zoo="tiny-1d", tasks=2, seeds=(0,), epochs=2, keep=2),
                vae_steps=3, vae_channels=8, align_steps=3, align_restarts=2, prior_steps=3, samples=2, eval_per_class=5, timed_tasks=1, pipeline_seeds=2, anchor="nearest_task", fresh_draws=True)
    data = run(retrieval, tmp_path, monkeypatch, tiny)
    assert {"original", "best original (val)", "nearest task (1-NN)", "nearest task (raw features)", "generated", "generated best-of-n (val)", "random init",
            "training"} <= methods(data)  # fmt: skip
    # Paired differences over 2 seeds x tasks, one of them against the best simple baseline.
    for modality, tasks in (("image", 2), ("signal", 2)):
        diffs = [r for r in data["rows"] if r["task"] == f"paired over seeds x tasks ({modality})"]
        assert len(diffs) == 2 * len(retrieval.BASELINES) + 2 and all(r["n"] == 2 * tasks and r["ci_low"] <= r["value"] <= r["ci_high"] for r in diffs)
        best = [r for r in diffs if r["method"] == "generated - best simple baseline"]
        assert len(best) == 1 and best[0]["baseline"] in retrieval.BASELINES
    # The best original by validation is one of the task's checkpoints.
    ckpts = [i for i in data["items"]["test_acc"] if i["method"] == "original checkpoint"]
    assert len(ckpts) == 4 * 2  # tasks x checkpoints per task
    for i in data["items"]["test_acc"]:
        if i["method"] == "best original (val)":
            assert i["test_acc"] in {c["test_acc"] for c in ckpts if c["task"] == i["task"]}
    losses = [r for r in data["rows"] if r["method"] == "alignment" and r["metric"] == "restart_final_loss"]
    assert len(losses) == 4 and all(r["n"] == 2 for r in losses)
    # Per-item values: every sample of every seed and task, and every baseline.
    items = data["items"]["test_acc"]
    assert {i["seed"] for i in items if i["method"] != "original checkpoint"} == {0, 1}
    assert sum(1 for i in items if i["method"] == "generated") == 2 * 4 * 2  # seeds x tasks x samples
    assert {i["method"] for i in items} >= {"original", "best original (val)", "nearest task (1-NN)", "generated best-of-n (val)"}
    tasks = {r["task"] for r in data["rows"] if r["method"] == "original" and r["metric"] == "test_acc"}
    assert any(t.startswith("mnist1d/") for t in tasks) and any(t.startswith("digits/") for t in tasks)
    ratio = [r for r in data["rows"] if r["metric"] == "train_s_over_generate_s"]
    assert len(ratio) == 2 and all(r["value"] > 0 for r in ratio)
    assert (tmp_path / "out" / "retrieval.png").stat().st_size > 0
    # The anchor's own retrieval is stored per item, and settings are chosen on a validation row.
    assert sum(1 for i in items if i["method"] == "nearest task (raw features)" and "retrieved" in i) == 2 * 4
    assert len([r for r in data["rows"] if r["metric"] == "val_acc"]) == 2


def test_retrieval_refuses_an_unknown_anchor(tmp_path, monkeypatch):
    tiny = dict(image=dict(zoo="tiny-img", tasks_per_dataset=1, seeds=(0,), zoo_epochs=2, keep_epochs=(1, 2), fashion_train_per_class=20),
                signal=dict(zoo="tiny-1d", tasks=2, seeds=(0,), epochs=2, keep=2),
                vae_steps=3, vae_channels=8, align_steps=3, align_restarts=1, prior_steps=3, samples=2, eval_per_class=5, timed_tasks=1, pipeline_seeds=1,
                anchor="prototype", fresh_draws=False)  # fmt: skip
    with pytest.raises(ValueError, match="anchor must be 'nearest_task' or 'none'"):
        run(retrieval, tmp_path, monkeypatch, tiny)


def test_nearest_tasks_is_cosine_1nn():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert retrieval.nearest_tasks(torch.tensor([[5.0, 0.1], [0.2, 3.0], [2.0, 2.1]]), keys, ["a", "b", "c"]) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="nearest_tasks"):
        retrieval.nearest_tasks(torch.zeros(1, 3), keys, ["a", "b", "c"])


def test_condition_uses_training_examples_only():
    task = get_task("mnist1d/0-1-2-3-4", max_train_per_class=20, max_eval_per_class=10)
    c = retrieval.task_condition(task, None, 3, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    shuffled = attrs.evolve(task, test=Split(torch.randn_like(task.test.x), task.test.y[torch.randperm(len(task.test.y), generator=g)]),
                            val=Split(torch.randn_like(task.val.x), task.val.y[torch.randperm(len(task.val.y), generator=g)]))
    assert torch.equal(c, retrieval.task_condition(shuffled, None, 3, torch.Generator().manual_seed(0)))
    moved = attrs.evolve(task, train=Split(task.train.x + 1.0, task.train.y))
    assert not torch.equal(c, retrieval.task_condition(moved, None, 3, torch.Generator().manual_seed(0)))
    assert c.shape == (5, 3, 40)
