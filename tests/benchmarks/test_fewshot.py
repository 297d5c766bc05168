"""benchmarks.fewshot runs end to end at a tiny size, writes the schema, and is seeded."""

from __future__ import annotations

import json

from tests.benchmarks.test_harnesses import methods, run

TINY = dict(per_class=40, backbone_epochs=1, zoo_tasks=30, zoo_draws=2, head_per_class=20, head_steps=10, vae_steps=5,
            vae_channels=8, prior_steps=5, samples=3, episodes=6, val_episodes=5, ft_steps=(5, 10), gen_ft_steps=(5,), lr_c=(1.0,))  # fmt: skip


def test_fewshot_harness_same_seed_same_table(tmp_path, monkeypatch):
    from benchmarks import fewshot

    a = run(fewshot, tmp_path / "a", monkeypatch, TINY)
    assert {"nearest centroid", "logistic regression", "fine-tuned from zero", "generated (1 sample)", "generated (best of 3 by support)",
            "generated best + fine-tune", "generated (other episode's support)"} <= methods(a)  # fmt: skip
    novel = [r for r in a["rows"] if r["task"] == "novel 5-way 1-shot" and r["metric"] == "acc"]
    assert novel and all(r["n"] == 6 and 0.0 <= r["value"] <= 1.0 for r in novel)
    assert {r["task"] for r in a["rows"]} >= {"novel 5-way 5-shot", "val 5-way 5-shot"}
    assert (tmp_path / "a" / "out" / "fewshot.png").stat().st_size > 0
    b = run(fewshot, tmp_path / "b", monkeypatch, TINY)
    values = lambda d: [(r["method"], r["task"], r["metric"], r["value"]) for r in d["rows"] if not (r["metric"].endswith("_s") or "_s_" in r["metric"])]  # noqa: E731  (timings differ)
    assert values(a) == values(b)
    assert json.dumps(a["config"]["chosen_on_validation"]) == json.dumps(b["config"]["chosen_on_validation"])
    nc = a["items"]["novel 5-way 1-shot"]["acc"]["nearest centroid"]  # (seeds, episodes)
    assert sum(nc[0]) / len(nc[0]) == next(r["value"] for r in novel if r["method"] == "nearest centroid")
    assert a["config"]["anchor"][0]["kind"] == "prototype_head"


def test_fewshot_two_seeds_paired_rows(tmp_path, monkeypatch):
    from benchmarks import fewshot

    d = run(fewshot, tmp_path, monkeypatch, {**TINY, "boot": 50}, ["--seeds", "2"])
    task = "novel 5-way 5-shot"
    items = d["items"][task]
    assert items["seeds"] == [1, 2] and len(items["acc"]["nearest centroid"]) == 2 and len(items["acc"]["nearest centroid"][0]) == 6
    assert len(items["generated_per_sample_acc"][0][0]) == 3  # (seed, episode, sample)
    best = d["config"]["best_simple_baseline"][task]
    means = {m: sum(map(sum, v)) / 12 for m, v in items["acc"].items()}
    assert best == max(("nearest centroid", "logistic regression", "fine-tuned from zero"), key=means.get)
    diffs = {r["metric"]: r for r in d["rows"] if r["task"] == task and r["method"] == "generated (best of 3 by support) - best baseline"}
    assert set(diffs) == {"acc_diff_items", "acc_diff_seeds_x_items", "acc_diff_seeds"}
    expected = means["generated (best of 3 by support)"] - means[best]
    assert all(abs(r["value"] - expected) < 1e-9 and r["baseline"] == best and r["ci_low"] <= r["value"] <= r["ci_high"] for r in diffs.values())


def test_fewshot_help(capsys):
    import pytest

    from benchmarks import fewshot

    with pytest.raises(SystemExit):
        fewshot.main(["--help"])
    assert "--quick" in capsys.readouterr().out


def test_split_base_keeps_zoo_classes_out_of_the_backbone():
    import pytest
    import torch

    from benchmarks.fewshot import split_base
    from paramgen.data.episodes import ClassPool

    names = [f"{d}/{c}@{r}" for d in ("fashion_mnist", "digits") for c in "abcde" for r in (0, 90)]
    pool = ClassPool(images=tuple(torch.zeros(1, 1, 28, 28) for _ in names), names=tuple(names), splits={"base": tuple(range(len(names))), "val": (), "novel": ()})
    assert split_base(pool, 0) == (list(range(20)), list(range(20)))
    backbone, zoo = split_base(pool, 2)
    assert sorted(backbone + zoo) == list(range(20)) and not set(backbone) & set(zoo)
    # Rotated copies follow their source class; each dataset gives 2 of its 5 sources.
    assert {names[c] for c in zoo} == {f"{d}/{c}@{r}" for d in ("fashion_mnist", "digits") for c in "ab" for r in (0, 90)}
    with pytest.raises(ValueError, match="no base source class"):
        split_base(pool, 5)
