"""``benchmarks.fidelity`` end to end at a tiny size: one task, two fine-tunes of a few steps.

The numbers mean nothing; the code path, the rows a reader relies on and the stored
per-item values are what is checked."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("sklearn")

TINY_ZOO = {"tasks": ("positive-or-not",), "seeds": (0, 1), "steps": 2, "lr": 2e-4, "batch_size": 8, "train_per_label": 8, "eval_per_label": 8}
TINY = dict(
    zoo=TINY_ZOO, pipeline_seeds=(0, 1), samples=2, draws=2, tokenizer_steps=2, prior_steps=2, batch_size=16, sample_steps=1,
    noise_levels=(1.0,), ablation=(32,), ablation_steps=1, boot=50,
)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from benchmarks import fidelity

    minilm = pytest.importorskip("paramgen.lora.setup")
    try:
        minilm._minilm_path()
    except Exception as e:  # the MiniLM package is not installed
        pytest.skip(f"no MiniLM weights: {e}")
    out = tmp_path_factory.mktemp("fidelity")
    saved = dict(fidelity.SIZES["quick"])
    fidelity.SIZES["quick"] = {**saved, **TINY}
    try:
        assert fidelity.main(["--quick", "--out", str(out / "out"), "--no-mlflow", "--threads", "2"]) == 0
    finally:
        fidelity.SIZES["quick"] = saved
    return json.loads((out / "out" / "results.json").read_text())


def test_every_method_is_scored_with_every_metric(results):
    rows = {(r["method"], r["task"], r["metric"]) for r in results["rows"]}
    for method in ("original (fine-tuned)", "tokenizer reconstruction", "generated", "soup (mean of the task's deltas)", "per-coordinate Gaussian",
                   "nearest + noise (L2 novelty 1)", "per-tensor mean (of the soup's weights)"):  # fmt: skip
        for metric in ("acc", "gain_recovered", "novelty_l2", "novelty_fn", "error_iou"):
            assert (method, "positive-or-not", metric) in rows, (method, metric)
    assert ("generated", "positive-or-not", "diversity_fn") in rows
    assert ("frozen base + logistic regression", "positive-or-not", "acc") in rows
    assert ("absolute weights, plain VAE 32x", "positive-or-not", "rel_l2_to_original") in rows


def test_paired_differences_and_per_item_values(results):
    diffs = [r for r in results["rows"] if r["method"].startswith("generated - ")]
    assert {r["metric"] for r in diffs} == {"acc_diff_items", "acc_diff_seeds_x_items", "acc_diff_seeds"}
    assert all(r["ci_low"] <= r["value"] <= r["ci_high"] for r in diffs)
    n = results["config"]["test_items"]["positive-or-not"]
    items = results["items"]
    assert len(items["labels"]["positive-or-not"]) == n
    generated = items["models"]["generated"]["positive-or-not"]
    assert sorted(set(generated["seeds"])) == [0, 1] and len(generated["preds"]) == 4  # 2 samples x 2 pipeline seeds
    assert all(len(p) == n for p in generated["preds"])
    assert results["peak_rss_mb"] > 0


def test_originals_are_their_own_nearest_checkpoint(results):
    value = {(r["method"], r["metric"]): r["value"] for r in results["rows"] if r["task"] == "positive-or-not"}
    assert value[("original (fine-tuned)", "novelty_fn")] == 0.0 and value[("original (fine-tuned)", "novelty_l2")] == 0.0
