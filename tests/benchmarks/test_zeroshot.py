"""The zeroshot harness: a tiny end-to-end run, and the conditioning images are all a head is generated from."""

from __future__ import annotations

import torch

import paramgen
from benchmarks import zeroshot
from tests.benchmarks.test_harnesses import methods, run


def test_zeroshot_harness(tmp_path, monkeypatch):
    tiny = dict(train_per_class=12, eval_per_class=6, pca=8, zoo_tasks=4, val_tasks=1, test_tasks=1, unseen_tasks=2,
                vae_steps=3, vae_channels=8, align_steps=3, prior_steps=3, samples=2, zoo_fractions=(0.5, 1.0), lr_c=(1.0,), boot=50)  # fmt: skip
    data = run(zeroshot, tmp_path, monkeypatch, tiny, ["--seeds", "2"])
    assert {*zeroshot.GENERATED, *zeroshot.SIMPLE_BASELINES, "trained head (oracle)", "generated [anchor=prototype_row]"} <= methods(data)
    sizes = {r.get("zoo_fraction", 1.0) for r in data["rows"] if r["method"] == "generated" and r["task"] == "unseen dataset (digits)"}
    assert sizes == {0.5, 1.0}
    task = "unseen dataset (digits)"
    items = data["items"][task]
    assert items["seeds"] == [1, 2] and len(items["tasks"]) == 2 and len(items["test_acc"]["generated"]) == 2
    best = data["config"]["best_simple_baseline"][task]
    mean = lambda m: sum(map(sum, items["test_acc"][m])) / 4  # noqa: E731
    assert best == max(zeroshot.SIMPLE_BASELINES, key=mean)
    diff = next(r for r in data["rows"] if r["task"] == task and r["method"] == "generated - best baseline" and r["metric"] == "acc_diff_seeds_x_items")
    assert abs(diff["value"] - (mean("generated") - mean(best))) < 1e-9 and diff["baseline"] == best
    assert {c["anchor"] for c in data["config"]["chosen_on_validation"].values()} <= {"none", "prototype_row"}
    assert (tmp_path / "out" / "zeroshot-zoo-size.png").stat().st_size > 0


def _feats(g: torch.Generator) -> dict:
    """Two datasets of random 8-d features, 10 classes, train/val/test splits."""
    out = {}
    for ds in ("a", "b"):
        out[ds] = {s: (torch.randn(100, 8, generator=g), torch.arange(10).repeat(10)) for s in ("train", "val", "test")}
    return out


def test_generated_head_sees_only_the_conditioning_images():
    g = torch.Generator().manual_seed(0)
    feats = _feats(g)
    tasks = [("a", (0, 1, 2, 3, 4)), ("a", (1, 3, 5, 7, 9)), ("b", (0, 2, 4, 6, 8))]
    conds = zeroshot.make_conditions(feats, tasks, shots=3, seed=0)
    size = {"vae_channels": 8}
    gen = zeroshot.row_generator(8, size)
    rows = torch.randn(15, 9, generator=g)
    from paramgen.heads import class_condition

    row_conds = [class_condition(conds[t], k) for t in tasks for k in range(5)]
    paramgen.fit(
        gen,
        rows,
        row_conds,
        tasks=[f"{t[0]}:{c}" for t in tasks for c in t[1]],
        tokenizer_steps=2,
        align_steps=2,
        prior_steps=2,
        batch_size=8,
        generator=torch.Generator().manual_seed(1),
        progress=False,
    )
    w, b = zeroshot.generate_heads(gen, conds[tasks[1]], 2, torch.Generator().manual_seed(2))
    # Shuffle the test and validation labels and replace their images: conditions and heads are unchanged.
    tampered = {ds: dict(sp) for ds, sp in feats.items()}
    for ds in tampered:
        for s in ("val", "test"):
            x, y = feats[ds][s]
            tampered[ds][s] = (torch.randn_like(x), y[torch.randperm(len(y), generator=g)])
    conds2 = zeroshot.make_conditions(tampered, tasks, shots=3, seed=0)
    assert all(torch.equal(conds[t], conds2[t]) for t in tasks)
    w2, b2 = zeroshot.generate_heads(gen, conds2[tasks[1]], 2, torch.Generator().manual_seed(2))
    assert torch.equal(w, w2) and torch.equal(b, b2)
    # ... while changing the training images does change them (the check can fail).
    tampered["a"]["train"] = (feats["a"]["train"][0] + 1.0, feats["a"]["train"][1])
    conds3 = zeroshot.make_conditions(tampered, tasks, shots=3, seed=0)
    w3, _ = zeroshot.generate_heads(gen, conds3[tasks[1]], 2, torch.Generator().manual_seed(2))
    assert not torch.equal(w, w3)
    assert w.shape == (2, 5, 8) and b.shape == (2, 5)
