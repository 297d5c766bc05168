"""benchmarks.zeroshot: conditions, generated heads and every selection stay blind to test images and labels.

A whole seed of the pipeline runs on random features twice, once with every test image
replaced by noise and the test labels shuffled: the choices made on validation (anchor
setting, C), the generated heads' chosen samples and the validation numbers must not move,
while the test accuracies do.
"""

from __future__ import annotations

import torch

from benchmarks import zeroshot

TINY = dict(train_per_class=12, eval_per_class=6, pca=8, zoo_tasks=3, val_tasks=1, test_tasks=1, unseen_tasks=2, shots=3, vae_steps=2, vae_channels=8,
            align_steps=2, prior_steps=2, samples=2, zoo_fractions=(1.0,), anchors=("none", "prototype_row"), lr_c=(0.1, 10.0), seeds=1, boot=10)  # fmt: skip


def _raw(corrupt_test: bool) -> dict:
    """Random 16-d 'backbone features' for every dataset; the same training and validation images either way."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for ds in (*zeroshot.ZOO_DATASETS, zeroshot.VAL_DATASET, zeroshot.UNSEEN_DATASET):
        out[ds] = {}
        for split in ("train", "val", "test"):
            y = torch.arange(10).repeat(12 if split == "train" else 6)
            x = torch.randn(len(y), 16, generator=g) + torch.nn.functional.one_hot(y, 16).float() * 3
            if split == "test" and corrupt_test:
                x = torch.randn(x.shape, generator=torch.Generator().manual_seed(5)) * 10
                y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(6))]
            out[ds][split] = (x, y)
    return out


def test_choices_and_generated_heads_ignore_the_test_split(monkeypatch, tmp_path):
    runs = []
    for corrupt in (False, True):
        raw = _raw(corrupt)
        monkeypatch.setattr(zeroshot, "features", lambda size, cache, raw=raw: raw)
        runs.append(zeroshot.run_seed((0, TINY, str(tmp_path / "unused.safetensors"))))
    clean, corrupted = runs
    assert clean["val_choice"] == corrupted["val_choice"]
    for name in ("val subsets", f"val dataset ({zeroshot.VAL_DATASET})"):
        assert clean["groups"][name] == corrupted["groups"][name]
    # The test split only scores: its numbers change, nothing chosen before them does.
    test = f"unseen dataset ({zeroshot.UNSEEN_DATASET})"
    assert clean["groups"][test]["generated"] != corrupted["groups"][test]["generated"]


def test_selections_use_only_the_conditioning_images():
    raw = _raw(False)
    feats = zeroshot.project(raw, TINY)
    task = ("digits", (0, 1, 2, 3, 4))
    cond = zeroshot.conditions_of(*zeroshot.task_data(feats, *task, "train"), 5, 3, torch.Generator().manual_seed(0))
    zoo = [("fashion", (0, 1, 2, 3, 4)), ("fashion", (5, 6, 7, 8, 9)), ("fashion_rot90", (0, 2, 4, 6, 8))]
    zoo_heads = torch.randn(3, 5, 9, generator=torch.Generator().manual_seed(1))
    zoo_means = torch.stack([zeroshot.class_means(zeroshot.conditions_of(*zeroshot.task_data(feats, *t, "train"), 5, 3, torch.Generator().manual_seed(2))) for t in zoo])
    args = (task, "test", cond, zoo_heads, zoo_means, [0, 1, 2], (1.0,))
    _, ref = zeroshot.baselines(feats, *args, seed=0, samples=2)
    other = {**feats, "digits": {**feats["digits"], "test": (torch.randn_like(feats["digits"]["test"][0]), feats["digits"]["test"][1].flip(0))}}
    accs, ref2 = zeroshot.baselines(other, *args, seed=0, samples=2)
    assert torch.equal(ref["nearest"], ref2["nearest"]) and torch.equal(ref["noisy"], ref2["noisy"])
    gen = zeroshot.fit_row_generator(zoo_heads.reshape(-1, 9), [zeroshot.class_condition(cond, k) for _ in range(3) for k in range(5)],
                                     [f"g{k}" for _ in range(3) for k in range(5)], 8, TINY, "prototype_row", generator=torch.Generator().manual_seed(0))  # fmt: skip
    a = zeroshot.generated(gen, feats, task, "test", cond, 3, torch.Generator().manual_seed(4))
    b = zeroshot.generated(gen, other, task, "test", cond, 3, torch.Generator().manual_seed(4))
    assert a["chosen"] == b["chosen"] and torch.equal(a["w"], b["w"]) and torch.equal(a["b"], b["b"])
    assert a["per_sample"] != b["per_sample"]
