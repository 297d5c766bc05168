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


def test_run_setup_parses_the_shared_arguments_and_sets_the_process_up():
    import torch

    from benchmarks.common import RunSetup

    sizes = {"quick": {"steps": 2}, "default": {"steps": 20}}
    threads = torch.get_num_threads()
    try:
        setup = RunSetup.from_args("unit", "Unit harness.\n\nMore text.", sizes, ["--seed", "4", "--threads", "1", "--no-mlflow"])
        assert (setup.size_name, setup.size, setup.seed, setup.mlflow) == ("default", {"steps": 20}, 4, False)
        assert str(setup.out) == "runs/unit-default" and torch.get_num_threads() == 1
        after_setup = torch.rand(3)
        torch.manual_seed(4)
        assert torch.equal(after_setup, torch.rand(3))  # the process's generator is seeded with --seed
        assert torch.equal(torch.rand(2, generator=setup.g(1)), torch.rand(2, generator=torch.Generator().manual_seed(4001)))
        assert not torch.equal(torch.rand(2, generator=setup.g(1)), torch.rand(2, generator=setup.g(2)))
        setup.size["steps"] = 0  # a copy: the harness's SIZES stay as they are
        assert sizes["default"]["steps"] == 20
    finally:
        torch.set_num_threads(threads)


def test_run_setup_harness_arguments_and_output_suffix(tmp_path):
    from benchmarks.common import RunSetup

    def add(p):
        p.add_argument("--variant", default="a")

    setup = RunSetup.from_args("unit", None, {"quick": {}, "default": {}}, ["--quick", "--variant", "b"], add_arguments=add,
                               out_suffix=lambda a: f"-{a.variant}")  # fmt: skip
    assert setup.args.variant == "b" and str(setup.out) == "runs/unit-quick-b"
    setup = RunSetup.from_args("unit", None, {"quick": {}, "default": {}}, ["--out", str(tmp_path / "x"), "--no-mlflow"])
    res = setup.results(seed=setup.seed)
    res.add("m", "t", "acc", 0.5)
    path = setup.write(res)
    assert path == tmp_path / "x" / "results.json" and json.loads(path.read_text())["harness"] == "unit"
    with pytest.raises(KeyError, match="no size 'quick'"):
        RunSetup.from_args("unit", None, {"default": {}}, ["--quick"])
    with pytest.raises(SystemExit):
        RunSetup.from_args("unit", None, {"default": {}}, ["--bogus"])


def test_run_setup_set_overrides_one_key_of_the_size_and_refuses_unknown_keys():
    from benchmarks.common import RunSetup

    sizes = {"quick": {"seeds": 1, "image": {"tasks": 2, "name": "a"}}, "default": {"seeds": 3, "image": {"tasks": 8, "name": "b"}}}
    setup = RunSetup.from_args("unit", None, sizes, ["--quick", "--set", "seeds=3", "--set", "image.tasks=4", "--set", "image.name=zoo-x"])
    assert setup.size == {"seeds": 3, "image": {"tasks": 4, "name": "zoo-x"}}
    assert sizes["quick"] == {"seeds": 1, "image": {"tasks": 2, "name": "a"}}  # the harness's SIZES are not changed
    with pytest.raises(ValueError, match="no key 'sedes'.*'image', 'seeds'"):
        RunSetup.from_args("unit", None, sizes, ["--quick", "--set", "sedes=3"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        RunSetup.from_args("unit", None, sizes, ["--set", "seeds"])
    with pytest.raises(ValueError, match="'seeds' is not a nested setting"):
        RunSetup.from_args("unit", None, sizes, ["--set", "seeds.x=1"])
