"""The generalization table reads the committed runs' own paired rows, and the docs page shows it verbatim."""

import json
from pathlib import Path

import pytest

from benchmarks import generalization_tables as gt

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_runs_give_one_row_per_headline_and_the_docs_page_shows_that_table(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    text = gt.main([])
    lines = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| headline")]
    assert len(lines) == len(gt.HEADLINES)
    for h in gt.HEADLINES:
        assert any(line.startswith(f"| {h.name} |") for line in lines)
    assert text in (ROOT / "docs" / "generalization.md").read_text()  # the page is this output, not a copy edited by hand


def test_a_headline_row_is_read_in_points_with_both_intervals():
    results = {
        "config": {"size": "quick", "seeds": 3},
        "rows": [
            {"method": "g - best baseline", "task": "t", "metric": "d", "value": -0.02, "ci_low": -0.03, "ci_high": -0.01, "n": 300, "baseline": "nearest centroid"},
            {"method": "g - best baseline", "task": "t", "metric": "d_seeds", "value": -0.02, "ci_low": -0.04, "ci_high": 0.005, "n": 3},
        ],
    }
    h = gt.Headline("x", "fewshot", "p.json", "g - best baseline", "t", "d", "d_seeds")
    row = gt.headline_row(h, results, "p.json")
    assert row["diff"] == pytest.approx(-2.0) and row["ci"] == pytest.approx((-3.0, -1.0)) and row["seed_ci"] == pytest.approx((-4.0, 0.5))
    assert (row["baseline"], row["seeds"], row["size"]) == ("nearest centroid", 3, "quick")
    assert "missed by 2.0" in gt.table([row])


def test_a_missing_row_is_named(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"config": {}, "rows": []}))
    with pytest.raises(ValueError, match="expected one row with method='generated - best baseline'"):
        gt.main(["--lora", str(path)])
