"""Experiment tracking: a small logger interface with stdout and MLflow implementations.

Training loops and benchmarks take a `Logger` and never talk to MLflow directly,
so that embedding paramgen in another project costs nothing: `NullLogger` is the
default, `StreamLogger` writes readable lines to a stream, and `MLflowLogger`
records params, metrics and artifacts in a local sqlite store (no server needed) unless
``MLFLOW_TRACKING_URI`` says otherwise.

Examples:
    >>> import io
    >>> out = io.StringIO()
    >>> with StreamLogger(out) as log:
    ...     log.log_params({"lr": 0.001})
    ...     log.log_metrics({"loss": 0.5}, step=3)
    >>> print(out.getvalue().strip())
    params: lr=0.001
    step 3: loss=0.5
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar, runtime_checkable

__all__ = ["Logger", "NullLogger", "StreamLogger", "MLflowLogger", "default_tracking_uri"]


@runtime_checkable
class Logger(Protocol):
    """Where runs report their configuration, numbers and files."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], *, step: int | None = None) -> None: ...

    def log_artifact(self, path: str | os.PathLike) -> None: ...

    def close(self) -> None: ...


_Self = TypeVar("_Self", bound="_ContextMixin")


class _ContextMixin:
    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # type: ignore[attr-defined]


class NullLogger(_ContextMixin):
    """Discards everything (the default for library code)."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], *, step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike) -> None:
        pass

    def close(self) -> None:
        pass


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class StreamLogger(_ContextMixin):
    """Writes one line per call to ``stream`` (standard output by default)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.stream.write("params: " + " ".join(f"{k}={_fmt(v)}" for k, v in params.items()) + "\n")

    def log_metrics(self, metrics: Mapping[str, float], *, step: int | None = None) -> None:
        head = "metrics" if step is None else f"step {step}"
        self.stream.write(f"{head}: " + " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items()) + "\n")

    def log_artifact(self, path: str | os.PathLike) -> None:
        self.stream.write(f"artifact: {path}\n")

    def close(self) -> None:
        self.stream.flush()


def default_tracking_uri(root: str | os.PathLike = "runs") -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a sqlite store ``<root>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    path = Path(root).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'mlflow.db'}"


class MLflowLogger(_ContextMixin):
    """Logs to MLflow; one instance is one run.

    Uses the client API (no global active run), so several loggers can coexist in one
    process and nothing leaks into the caller's MLflow state.

    Args:
        experiment: Experiment name (benchmarks use the harness name).
        run_name: Optional run name.
        root: Folder of the default sqlite store and its artifacts.
        tracking_uri: Overrides ``MLFLOW_TRACKING_URI`` and the default store.
        tags: Run tags.
    """

    def __init__(
        self,
        experiment: str,
        *,
        run_name: str | None = None,
        root: str | os.PathLike = "runs",
        tracking_uri: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("MLflowLogger needs mlflow: pip install 'paramgen[tracking]'") from e
        self.tracking_uri = tracking_uri or default_tracking_uri(root)
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            artifacts = None
            if self.tracking_uri.startswith("sqlite:///"):
                # Keep artifacts beside the database, not in ./mlruns of the working dir.
                artifacts = (Path(self.tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
            experiment_id = self.client.create_experiment(experiment, artifact_location=artifacts)
        else:
            experiment_id = found.experiment_id
        self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {})).info.run_id
        self._closed = False

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        # MLflow caps param values at 6000 characters; longer ones belong in artifacts.
        items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
        self.client.log_batch(self.run_id, params=items)

    def log_metrics(self, metrics: Mapping[str, float], *, step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(str(k), float(v), now, step or 0) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=items)

    def log_artifact(self, path: str | os.PathLike) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str = "FINISHED") -> None:
        if not self._closed:
            self.client.set_terminated(self.run_id, status=status)
            self._closed = True
