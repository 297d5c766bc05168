"""Each harness runs end to end at a tiny size and writes the shared results schema.

The numbers of these runs mean nothing (a few optimizer steps); the code path is what is
checked. The `--quick` and default sizes are run by hand / CI smoke (see docs).
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import pytest

SCHEMA = {"harness", "config", "environment", "wall_s", "peak_rss_mb", "rows"}
ROW = {"method", "task", "metric", "value", "ci_low", "ci_high", "n"}


@functools.cache
def _empty_mlflow_store() -> Path:
    """One freshly created MLflow sqlite store per test process. Creating the schema takes
    about 4 s, so each harness run starts from a copy of it (creating a store from nothing is
    checked by ``tests/test_benchmarks_common.py``)."""
    from mlflow.tracking import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="paramgen-test-mlflow-"))
    atexit.register(shutil.rmtree, folder, True)
    MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return folder / "mlflow.db"


def run(module, tmp_path, monkeypatch, tiny: dict, extra: list[str] = ()) -> dict:
    """Run a harness at ``--quick`` overridden by ``tiny``; check its results.json and that it
    logged one MLflow run to the default store beside its output folder."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setitem(module.SIZES, "quick", {**module.SIZES["quick"], **tiny})
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tmp_path / "mlflow" / "mlflow.db"
    store.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_empty_mlflow_store(), store)
    assert module.main(["--quick", "--out", str(tmp_path / "out"), "--seed", "1", *extra]) == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(data) - {"items"} == SCHEMA and data["harness"] == module.__name__.rsplit(".", 1)[1]
    assert all(ROW <= set(r) for r in data["rows"])
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name(data["harness"])
    assert experiment is not None
    logged = client.search_runs([experiment.experiment_id])
    assert len(logged) == 1 and logged[0].data.metrics["wall_s"] == pytest.approx(data["wall_s"])
    return data


def methods(data: dict) -> set[str]:
    return {r["method"] for r in data["rows"]}


def test_modelzoo_harness(tmp_path, monkeypatch):
    from benchmarks import modelzoo

    tiny = dict(tasks_per_dataset=1, zoo_epochs=2, keep_epochs=(1, 2), fashion_train_per_class=30, vae_steps=10,
                vae_channels=8, align_steps=10, prior_steps=10, samples=2, eval_per_class=10, finetune_tasks=2,
                finetune_epochs=(1,), finetune_train_per_class=10, matrix_tasks=2)
    data = run(modelzoo, tmp_path, monkeypatch, tiny)
    assert {"zoo", "generated", "generated DDIM-50", "generated best-of-n (val)", "reconstruction", "kde latent", "noise 0.06", "noise 0.12",
            "noise matched", "mean of 4", "gaussian", "random init"} <= methods(data)
    finetuned = [r for r in data["rows"] if r["task"] == "fine-tuned"]
    assert {r["epoch"] for r in finetuned} == {0, 1} and all(r["n"] == 2 for r in finetuned)
    assert any(r["metric"] == "diag_is_row_max" for r in data["rows"])
    assert {"generated (fresh draw)", "generated (fresh draw) best-of-n (val)", "fresh draw - fitted set"} <= methods(data)
    restarts = [r for r in data["rows"] if r["metric"] == "restart_final_loss"]
    assert len(restarts) == 1 and restarts[0]["n"] == modelzoo.SIZES["quick"]["align_restarts"]
    per_sample = data["items"]["test_acc per sample"]
    assert set(per_sample) == {"zoo", "generated", "generated (fresh draw)"} and all(len(v) == 2 for v in per_sample.values())


def test_unconditional_harness_same_seed_same_table(tmp_path, monkeypatch):
    """The harness's rows, and --seed makes a run reproducible: two runs, identical numbers."""
    from benchmarks import unconditional

    tiny = dict(train_per_class=20, eval_per_class=10, base_epochs=1, collect_steps=8, vae_steps=5, prior_steps=5, samples=4, channels=8)
    a = run(unconditional, tmp_path / "a", monkeypatch, tiny)
    assert {"original", "VAE+DDPM", "DDPM", "noise 0.06", "noise 0.12"} <= methods(a)
    fit = {r["method"]: r["value"] for r in a["rows"] if r["metric"] == "fit_s"}
    assert set(fit) == {"VAE+DDPM", "DDPM"} and all(v > 0 for v in fit.values())
    b = run(unconditional, tmp_path / "b", monkeypatch, tiny)
    values = lambda d: [(r["method"], r["metric"], r["value"]) for r in d["rows"] if not r["metric"].endswith("_s")]  # noqa: E731
    assert values(a) == values(b)


@pytest.mark.parametrize("name", ["modelzoo", "unconditional"])
def test_harness_help(name, capsys):
    module = __import__(f"benchmarks.{name}", fromlist=["main"])
    with pytest.raises(SystemExit):
        module.main(["--help"])
    assert "--quick" in capsys.readouterr().out
