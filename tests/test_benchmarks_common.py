"""The shared results schema of the benchmark harnesses."""

import json

import pytest

from benchmarks.common import Results, mean_ci


def test_mean_ci_matches_t_interval():
    mean, lo, hi = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    # t(0.975, 3) = 3.182; sd = 1.291; half = 3.182 * 1.291 / 2
    assert hi - mean == pytest.approx(3.1824 * 1.2910 / 2, rel=1e-3) and mean - lo == pytest.approx(hi - mean)
    assert mean_ci([0.7]) == (0.7, 0.7, 0.7)
    with pytest.raises(ValueError):
        mean_ci([])


def test_results_json_schema_and_mlflow(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = Results("unit", config={"quick": True, "seed": 3})
    res.add("generated", "digits/0-1", "acc", [0.9, 0.8], epoch=0)
    with pytest.raises(ValueError, match="NaN"):
        res.add("broken", "t", "acc", [float("nan")])
    path = res.write(tmp_path / "out")
    data = json.loads(path.read_text())
    assert set(data) == {"harness", "config", "environment", "wall_s", "peak_rss_mb", "rows"}
    row = data["rows"][0]
    assert {"method", "task", "metric", "value", "ci_low", "ci_high", "n"} <= set(row) and row["epoch"] == 0
    assert row["n"] == 2 and row["ci_low"] < row["value"] < row["ci_high"]
    assert data["peak_rss_mb"] > 10 and (tmp_path / "mlflow" / "mlflow.db").exists()
    assert "generated" in res.table()
