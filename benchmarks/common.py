"""What every benchmark harness shares: the run setup, confidence intervals, the results schema.

`RunSetup.from_args` is the first line of every harness's ``main``: it parses the shared
arguments, picks the size (``--quick`` or the default), sets torch's threads and seeds the
process's global generator (module initializations; a harness owns its process), names the
output folder and configures logging.

Every harness writes ``results.json`` of one schema (``docs/benchmarks.md``):

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
import logging
import math
import os
import platform
import re
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["parser", "RunSetup", "mean_ci", "Results", "environment", "parallel_map", "first_per_class", "capped", "peak_rss_growth"]

T = TypeVar("T")


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


@dataclass(frozen=True)
class RunSetup:
    """One harness run: its arguments, size, seed and output folder (from `from_args`).

    Attributes:
        harness: The harness's name (``benchmarks.<harness>``).
        args: The parsed arguments (the shared ones and any the harness added).
        size_name: ``"quick"`` or ``"default"``.
        size: ``sizes[size_name]``.
        out: The output folder (``--out``, or ``runs/<harness>-<size_name><suffix>``).
        started: `time.perf_counter` at setup: ``results.json``'s ``wall_s`` counts from here.

    Examples:
        >>> setup = RunSetup.from_args("demo", "A demo.", {"quick": {"n": 1}, "default": {"n": 9}}, ["--quick", "--seed", "3"])
        >>> setup.size_name, setup.size, setup.seed, str(setup.out), setup.mlflow
        ('quick', {'n': 1}, 3, 'runs/demo-quick', True)
        >>> setup.g(2).initial_seed()
        3002
    """

    harness: str
    args: argparse.Namespace
    size_name: str
    size: dict[str, Any]
    out: Path
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def from_args(
        cls,
        harness: str,
        description: str | None,
        sizes: Mapping[str, Mapping[str, Any]],
        argv: Sequence[str] | None = None,
        *,
        add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
        out_suffix: Callable[[argparse.Namespace], str] | None = None,
    ) -> RunSetup:
        """Parse ``argv`` and set the process up for a run.

        Sets torch's intra-op threads (``--threads``), seeds torch's global generator with
        ``--seed`` (module initializations draw from it; a harness owns its process) and
        configures logging (INFO, bare messages) unless the process already has handlers.

        Args:
            harness: The harness's name.
            description: The module docstring; its first paragraph is the ``--help`` text.
            sizes: ``{"quick": {...}, "default": {...}}``.
            argv: Arguments (``None``: ``sys.argv[1:]``).
            add_arguments: Adds the harness's own arguments to the shared parser.
            out_suffix: Appended to the default output folder's name (a variant's name).

        Returns:
            The setup.

        Raises:
            KeyError: ``sizes`` lacks the chosen size.
        """
        import torch

        p = parser(harness, (description or "").split("\n\n")[0])
        if add_arguments is not None:
            add_arguments(p)
        args = p.parse_args(argv)
        size_name = "quick" if args.quick else "default"
        if size_name not in sizes:
            raise KeyError(f"{harness}: no size {size_name!r}; sizes are {sorted(sizes)}")
        logging.basicConfig(level=logging.INFO, format="%(message)s")  # a no-op where logging is configured
        torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)  # module initializations; a harness owns its process's RNG
        suffix = out_suffix(args) if out_suffix is not None else ""
        out = Path(args.out or f"runs/{harness}-{size_name}{suffix}")
        return cls(harness=harness, args=args, size_name=size_name, size=dict(sizes[size_name]), out=out)

    @property
    def seed(self) -> int:
        """``--seed``."""
        return int(self.args.seed)

    @property
    def mlflow(self) -> bool:
        """Whether to log to MLflow (not ``--no-mlflow``)."""
        return not self.args.no_mlflow

    def g(self, k: int) -> Any:
        """A `torch.Generator` seeded ``seed * 1000 + k``: one independent stream per use ``k``."""
        import torch

        return torch.Generator().manual_seed(self.seed * 1000 + k)

    def results(self, **config: Any) -> Results:
        """A `Results` of this harness whose ``wall_s`` counts from the setup."""
        return Results(self.harness, config=config, start=self.started)

    def write(self, res: Results, *, artifacts: Sequence[str | os.PathLike] = ()) -> Path:
        """``res.write`` into `out`, to MLflow unless ``--no-mlflow``; returns the JSON path."""
        return res.write(self.out, mlflow=self.mlflow, artifacts=artifacts)


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


# --------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    if match is None:  # pragma: no cover
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1))


def peak_rss_growth(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, int]:
    """Call ``fn`` and return ``(result, bytes)``: how far peak RSS rose above RSS before the call.

    Linux only: resets the process's high-water mark by writing ``5`` to
    ``/proc/self/clear_refs``, then reads ``VmHWM``. The figure counts every thread of
    the process and file pages mapped by the call (e.g. mmapped reads); memory freed
    before the call but kept by the allocator can hide part of a growth, so measure in a
    fresh process for exact budgets (as `benchmarks.scale` does).

    Raises:
        RuntimeError: The platform cannot reset the high-water mark.

    Examples:
        >>> import torch
        >>> _, grew = peak_rss_growth(lambda: torch.ones(2**25).sum())  # 128 MiB, freed at once
        >>> grew >= 0  # in a warm process the allocator may serve it from memory it kept
        True
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as e:
        raise RuntimeError(f"peak_rss_growth needs Linux's /proc/self/clear_refs: {e}") from e
    before = _status_kib("VmRSS")
    result = fn(*args, **kwargs)
    peak = _status_kib("VmHWM")
    return result, max(0, peak - before) * 1024
