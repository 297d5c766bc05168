"""Loggers: stream output and a real MLflow sqlite store."""

import io

from paramgen.tracking import Logger, MLflowLogger, NullLogger, StreamLogger


def test_stream_logger_lines():
    out = io.StringIO()
    log = StreamLogger(out)
    assert isinstance(log, Logger) and isinstance(NullLogger(), Logger)
    log.log_params({"a": 1, "b": "x"})
    log.log_metrics({"acc": 0.25}, step=2)
    assert out.getvalue().splitlines() == ["params: a=1 b=x", "step 2: acc=0.25"]


def test_mlflow_logger_sqlite_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    artifact = tmp_path / "table.txt"
    artifact.write_text("hello")
    with MLflowLogger("unit-test", root=tmp_path / "store", run_name="r1") as log:
        log.log_params({"lr": 0.1})
        log.log_metrics({"loss": 1.5}, step=1)
        log.log_metrics({"loss": 0.5}, step=2)
        log.log_artifact(artifact)
    assert log.tracking_uri == f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    run = log.client.get_run(log.run_id)
    assert run.data.params == {"lr": "0.1"}
    assert run.data.metrics == {"loss": 0.5}
    assert [m.value for m in log.client.get_metric_history(log.run_id, "loss")] == [1.5, 0.5]
    assert run.info.status == "FINISHED"
    assert [a.path for a in log.client.list_artifacts(log.run_id)] == ["table.txt"]
    assert (tmp_path / "store" / "artifacts").is_dir()
    assert not (tmp_path / "mlruns").exists()


def test_mlflow_env_override(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with MLflowLogger("unit-test-env", root=tmp_path / "unused") as log:
        log.log_metrics({"x": 1.0})
    assert log.tracking_uri == uri and (tmp_path / "other.db").exists()
