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


def test_fit_logs_what_the_tracker_gets_at_info(caplog):
    """`paramgen fit` shows losses through logging: the values the tracker receives, as
    INFO records of paramgen.training naming stage, step and loss."""
    import logging

    import torch

    from paramgen import Generator, ModelVectorizer, ParamSpec
    from paramgen.priors import DiffusionPrior
    from paramgen.tokenizers import VAETokenizer
    from paramgen.training import FitConfig, fit

    class Recorder(NullLogger):
        def __init__(self) -> None:
            self.rows: list[tuple[int | None, dict[str, float]]] = []

        def log_metrics(self, metrics, *, step=None):  # noqa: ANN001
            self.rows.append((step, dict(metrics)))

    torch.manual_seed(0)
    spec = ParamSpec.from_module(torch.nn.Linear(4, 3))
    tok = VAETokenizer(rows=1, width=spec.numel, latent_channels=2, latent_length=4, hidden_channels=8, num_down=1)
    gen = Generator(vectorizer=ModelVectorizer(spec), tokenizer=tok, prior=DiffusionPrior(shape=tok.latent_shape, base_channels=8, channel_mults=(1,), timesteps=20))
    tracker = Recorder()
    with caplog.at_level(logging.INFO, logger="paramgen.training"):
        fit(gen, torch.randn(8, spec.numel), config=FitConfig(tokenizer_steps=4, prior_steps=4, batch_size=4, log_every=2, progress=False), tracker=tracker)
    lines = [r.getMessage() for r in caplog.records if r.name == "paramgen.training" and r.levelno == logging.INFO]
    expected = []
    for step, metrics in tracker.rows:
        stage = next(iter(metrics)).split("/")[0]
        values = " ".join(f"{k.split('/', 1)[1]}={v:.4g}" for k, v in metrics.items())
        expected.append(f"{stage} step {step}/4: {values}")
    assert [(s, next(iter(m)).split("/")[0]) for s, m in tracker.rows] == [(2, "tokenizer"), (4, "tokenizer"), (2, "prior"), (4, "prior")]
    assert lines == expected
    assert all(" loss=" in line for line in lines)
