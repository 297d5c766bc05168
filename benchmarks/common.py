"""What every benchmark harness shares: arguments, confidence intervals, the results schema.

Every harness writes ``results.json`` of one schema (``../shared/BENCHMARKS.md``):

    {"harness", "config", "environment", "wall_s", "peak_rss_mb",
     "rows": [{"method", "task", "metric", "value", "ci_low", "ci_high", "n", ...}]}

prints the same rows as a table, and logs everything to MLflow under the experiment
named after the harness.

Examples:
    >>> res = Results("demo", config={"seed": 0})
    >>> _ = res.add("random init", "digits", "acc", [0.1, 0.12, 0.09])
    >>> res.rows[0]["n"], round(res.rows[0]["value"], 3)
    (3, 0.103)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["parser", "mean_ci", "Results", "environment", "parallel_map", "first_per_class", "capped"]


def parser(harness: str, description: str) -> argparse.ArgumentParser:
    """The arguments every harness takes: ``--quick``, ``--seed``, ``--out``, ``--no-mlflow``."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{harness}", description=description)
    p.add_argument("--quick", action="store_true", help="small size (about 2 minutes here)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help=f"output folder (default: runs/{harness}[-quick])")
    p.add_argument("--no-mlflow", action="store_true", help="skip MLflow logging")
    # Small models run fastest on one thread; two threads on two busy cores thrash.
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1)")
    return p


def _t_quantile_975(df: int) -> float:
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:  # normal approximation
        return 1.96


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval of ``values`` (the interval is the mean itself for n = 1)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return mean, mean, mean
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = _t_quantile_975(n - 1) * math.sqrt(var / n)
    return mean, mean - half, mean + half


def environment() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "argv": sys.argv,
    }


class Results:
    """Rows of one harness run, written as ``results.json``, a table, and MLflow."""

    def __init__(self, harness: str, *, config: Mapping[str, Any], start: float | None = None) -> None:
        self.harness = harness
        self.config = dict(config)
        self.rows: list[dict[str, Any]] = []
        self.start = time.perf_counter() if start is None else start  # wall_s counts from here

    def add(self, method: str, task: str, metric: str, values: float | Sequence[float], **extra: Any) -> dict[str, Any]:
        """Add a row: ``values`` are per-seed/episode/sample numbers (or one number)."""
        vals = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
        if any(math.isnan(v) for v in vals):
            raise ValueError(f"row {method}/{task}/{metric} contains NaN")
        mean, lo, hi = mean_ci(vals)
        row = {"method": method, "task": task, "metric": metric, "value": mean, "ci_low": lo, "ci_high": hi, "n": len(vals), **extra}
        self.rows.append(row)
        return row

    def table(self, *, skip_tasks: Sequence[str] = ()) -> str:
        """The rows as text; rows of ``skip_tasks`` (e.g. per-task detail) stay in the JSON only."""
        base = {"method", "task", "metric", "value", "ci_low", "ci_high", "n"}
        lines = [f"{'method':<22} {'task':<22} {'metric':<20} {'value':>9} {'95% CI':>21} {'n':>5}  extra"]
        skip = set(skip_tasks)
        for r in self.rows:
            if r["task"] in skip:
                continue
            ci = f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]"
            extra = " ".join(f"{k}={v}" for k, v in r.items() if k not in base)
            lines.append(f"{r['method']:<22} {r['task']:<22} {r['metric']:<20} {r['value']:>9.4f} {ci:>21} {r['n']:>5}  {extra}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        return {
            "harness": self.harness,
            "config": self.config,
            "environment": environment(),
            "wall_s": time.perf_counter() - self.start,
            "peak_rss_mb": max(rss, children) / 1024,  # ru_maxrss is in KiB on Linux
            "rows": self.rows,
        }

    def write(self, out: str | os.PathLike, *, mlflow: bool = True, artifacts: Sequence[str | os.PathLike] = ()) -> Path:
        """Write ``results.json`` to ``out`` (atomically) and log to MLflow; returns the JSON path."""
        from paramgen.io import write_json

        out = Path(out)
        data = self.to_dict()
        path = out / "results.json"
        write_json(path, data)
        if mlflow:
            from paramgen.tracking import MLflowLogger

            # One store for all harnesses, beside their output folders (MLFLOW_TRACKING_URI wins).
            with MLflowLogger(self.harness, root=out.resolve().parent / "mlflow") as log:
                log.log_params({k: json.dumps(v) if not isinstance(v, (int, float, str)) else v for k, v in self.config.items()})
                metrics = {}
                for r in self.rows:
                    key = f"{r['method']}/{r['task']}/{r['metric']}".replace(" ", "_")
                    key = "".join(ch if ch.isalnum() or ch in "_-./" else "_" for ch in key)
                    metrics[key] = r["value"]
                metrics["wall_s"], metrics["peak_rss_mb"] = data["wall_s"], data["peak_rss_mb"]
                log.log_metrics(metrics)
                log.log_artifact(path)
                for a in artifacts:
                    log.log_artifact(a)
        return path


def first_per_class(y: Any, per_class: int) -> Any:
    """Sorted indices of the first ``per_class`` examples of each label in ``y`` (a fixed subset).

    Examples:
        >>> import torch
        >>> first_per_class(torch.tensor([0, 1, 0, 0, 1]), 2).tolist()
        [0, 1, 2, 4]
    """
    import torch

    return torch.cat([torch.nonzero(y == c).squeeze(1)[:per_class] for c in y.unique()]).sort().values


def capped(split: Any, per_class: int) -> Any:
    """A `paramgen.data.Split` cut to its first ``per_class`` examples of each class."""
    return split.take(first_per_class(split.y, per_class))


def parallel_map(fn: Any, items: Sequence[Any], *, workers: int = 2) -> list[Any]:
    """``[fn(x) for x in items]`` in ``workers`` spawned processes (one torch thread each).

    ``fn`` must be a module-level function. ``workers <= 1`` runs in this process.
    """
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_one_thread) as pool:
        return list(pool.map(fn, items))


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)
