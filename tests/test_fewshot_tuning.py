"""benchmarks.fewshot_tuning writes results.json of the shared schema, per variant and shot, with per-episode values."""

from __future__ import annotations

import json

from benchmarks import fewshot, fewshot_tuning
from tests.benchmarks.test_fewshot import TINY


def test_fewshot_tuning_writes_results(tmp_path, monkeypatch):
    monkeypatch.setitem(fewshot.SIZES, "quick", {**fewshot.SIZES["quick"], **TINY})
    monkeypatch.setitem(fewshot_tuning.SIZES, "quick", {"variants": ["whole heads", "residual"], "episodes": 4, "overrides": {}})
    assert fewshot_tuning.main(["--quick", "--no-mlflow", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["harness"] == "fewshot_tuning" and {"config", "environment", "wall_s", "peak_rss_mb", "rows", "items"} <= set(data)
    acc = [r for r in data["rows"] if r["metric"] == "acc"]
    assert {r["variant"] for r in acc} == {"whole heads", "residual"} and all(r["n"] == 4 for r in acc)
    assert {r["task"] for r in acc} == {"val 5-way 1-shot", "val 5-way 5-shot"}
    assert len(data["items"]["residual"]["val 5-way 5-shot"]["nearest centroid"]) == 4
