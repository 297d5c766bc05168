"""The retrieval harness: a tiny end-to-end run, and the condition is drawn from training examples only."""

from __future__ import annotations

import attrs
import torch

from benchmarks import retrieval
from paramgen.data import Split, get_task
from tests.benchmarks.test_harnesses import methods, run


def test_retrieval_harness(tmp_path, monkeypatch):
    tiny = dict(image=dict(zoo="tiny-img", tasks_per_dataset=1, seeds=(0,), zoo_epochs=2, keep_epochs=(1, 2), fashion_train_per_class=20),
                signal=dict(zoo="tiny-1d", tasks=2, seeds=(0,), epochs=2, keep=2),
                vae_steps=3, vae_channels=8, align_steps=3, prior_steps=3, samples=2, eval_per_class=5, timed_tasks=1)
    data = run(retrieval, tmp_path, monkeypatch, tiny)
    assert {"original", "generated", "generated best-of-n (val)", "random init", "training"} <= methods(data)
    tasks = {r["task"] for r in data["rows"] if r["method"] == "original" and r["metric"] == "test_acc"}
    assert any(t.startswith("mnist1d/") for t in tasks) and any(t.startswith("digits/") for t in tasks)
    ratio = [r for r in data["rows"] if r["metric"] == "train_s_over_generate_s"]
    assert len(ratio) == 2 and all(r["value"] > 0 for r in ratio)
    assert (tmp_path / "out" / "retrieval.png").stat().st_size > 0


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
