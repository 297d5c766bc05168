"""The cross-architecture harness runs end to end at a tiny size, with either generator.

The same benchmark code path runs IGPG's VQ tokens + GPT and D2NWG's VAE + latent DDPM:
only the components differ (`benchmarks.cross_arch.make_generator`).
"""

from __future__ import annotations

import pytest

from tests.benchmarks.test_harnesses import methods, run

TINY = dict(archs=("convnet-8-16", "convnet-12-24"), zoo_epochs=2, keep_epochs=(1, 2), fashion_train_per_class=20, codebook_size=16,
            tokens_per_chunk=8, hidden=16, tokenizer_steps=5, prior_steps=5, context=4, d_model=16, layers=1, samples=2, eval_per_class=10,
            finetune_train_per_class=10)


@pytest.mark.parametrize("components", ["vq-gpt", "vae-ddpm"])
def test_cross_arch_harness_swaps_generators_by_components_only(components, tmp_path, monkeypatch):
    from benchmarks import cross_arch

    data = run(cross_arch, tmp_path, monkeypatch, TINY, extra=["--components", components])
    assert data["config"]["components"] == components and data["config"]["seen"] == ["convnet-8-16"] and data["config"]["unseen"] == ["convnet-12-24"]
    assert {"original", "generated", "generated best-of-n (val)", "reconstruction", "random init", "other dataset"} <= methods(data)
    groups = {(r["method"], r["task"]) for r in data["rows"] if r["metric"] == "acc_over_original"}
    assert groups == {(m, g) for m in ("generated", "generated best-of-n (val)") for g in ("seen archs", "unseen archs")}
    finetuned = [r for r in data["rows"] if r["metric"] == "test_acc_finetune"]
    assert {r["epoch"] for r in finetuned} == {0, 1} and {r["group"] for r in finetuned} == {"seen", "unseen"}
