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
import copy
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

__all__ = [
    "parser",
    "override_size",
    "RunSetup",
    "mean_ci",
    "Results",
    "environment",
    "parallel_map",
    "first_per_class",
    "capped",
    "peak_rss_growth",
    "paired_bootstrap",
    "clustered_bootstrap",
    "mcnemar",
    "paired_seed_ci",
]

T = TypeVar("T")

logger = logging.getLogger(__name__)


def parser(harness: str, description: str) -> argparse.ArgumentParser:
    """The arguments every harness takes: ``--quick``, ``--seed``, ``--out``, ``--no-mlflow``."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{harness}", description=description)
    p.add_argument("--quick", action="store_true", help="small size (about 2 minutes here)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help=f"output folder (default: runs/{harness}[-quick])")
    p.add_argument("--no-mlflow", action="store_true", help="skip MLflow logging")
    # Small models run fastest on one thread; two threads on two busy cores thrash.
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help="override one key of the chosen size (JSON value, else a string; a dotted KEY reaches into a nested dict), e.g. --set pipeline_seeds=3",
    )  # fmt: skip
    return p


def override_size(size: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``size`` with ``KEY=VALUE`` overrides applied (``--set``); only existing keys.

    A value is read as JSON (``3``, ``[0, 1]``, ``true``), else kept as a string; a dotted
    key (``image.seeds``) reaches into a nested dict. Nested dicts are copied, not changed.

    Raises:
        ValueError: An override without ``=``, or a key the size does not have (the valid
            keys are named).

    Examples:
        >>> override_size({"steps": 10, "image": {"seeds": [0]}}, ["steps=3", "image.seeds=[0, 1]"])
        {'steps': 3, 'image': {'seeds': [0, 1]}}
        >>> override_size({"steps": 10}, ["stpes=3"])
        Traceback (most recent call last):
        ...
        ValueError: --set stpes=3: the size has no key 'stpes'; its keys are ['steps']
    """
    out = copy.deepcopy(dict(size))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *parents, leaf = key.split(".")
        node: Any = out
        for part in parents:
            if not isinstance(node, dict) or not isinstance(node.get(part), dict):
                raise ValueError(f"--set {item}: {part!r} is not a nested setting of the size")
            node = node[part]
        if leaf not in node:
            raise ValueError(f"--set {item}: the size has no key {leaf!r}; its keys are {sorted(node)}")
        node[leaf] = value
    return out


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
        size = override_size(sizes[size_name], args.overrides)
        if args.overrides:
            logger.info("%s: size %s with --set %s", harness, size_name, " ".join(args.overrides))
        return cls(harness=harness, args=args, size_name=size_name, size=size, out=out)

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
        #: Per-item values (e.g. predictions per test item, per model and seed) written to
        #: results.json under ``"items"`` so that paired differences can be recomputed; not
        #: logged to MLflow as parameters (the JSON itself is an artifact).
        self.items: dict[str, Any] = {}
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
            **({"items": self.items} if self.items else {}),
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


# --------------------------------------------------------------------------- paired statistics
# Two methods scored on the same test items (and the same seeds): their difference is what
# is compared, not two separate intervals. Computed on the CPU in float64; the inputs may be
# lists, NumPy arrays or tensors on any device, and a seed gives the same interval anywhere.
_BLOCK = 2**22  # bootstrap indices drawn per block (32 MiB of int64)


def _as_float64(x: Any, what: str, ndim: int) -> Any:
    import torch

    t = (x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(x)).to(device="cpu", dtype=torch.float64)
    if t.ndim != ndim:
        raise ValueError(f"{what}: expected {'per-item values (N,)' if ndim == 1 else 'values per seed and item (K, N)'}, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{what}: no values")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} contains NaN or infinite values")
    return t


def _paired(a: Any, b: Any, ndim: int) -> Any:
    ta, tb = _as_float64(a, "a", ndim), _as_float64(b, "b", ndim)
    if ta.shape != tb.shape:
        raise ValueError(f"paired values must cover the same items: a has shape {tuple(ta.shape)}, b {tuple(tb.shape)}")
    return ta - tb


def _percentile_95(boot: Any) -> tuple[float, float]:
    import torch

    lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64))  # linear interpolation, NumPy's default
    return float(lo), float(hi)


def _counts(high: int, rows: int, generator: Any) -> Any:
    """``(rows, high)`` float64: how often each of ``high`` units is drawn in ``rows`` resamples of size ``high``."""
    import torch

    idx = torch.randint(0, high, (rows, high), generator=generator)  # (rows, high)
    return torch.zeros((rows, high), dtype=torch.float64).scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))


def paired_bootstrap(a: Any, b: Any, *, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean difference ``a - b`` over items, with a percentile 95 % bootstrap interval over items.

    Args:
        a: ``(N,)`` per-item scores of method A (0/1 correctness, or floats).
        b: ``(N,)`` scores of method B on the same items, in the same order.
        n_boot: Bootstrap resamples.
        seed: Seeds the resampling (a private generator; the global one is untouched).

    Returns:
        ``(mean_diff, lo, hi)``.

    Raises:
        ValueError: Shapes differ, no items, or a NaN.

    Examples:
        >>> d, lo, hi = paired_bootstrap([1, 1, 0, 1, 1, 0, 1, 1], [1, 0, 0, 1, 0, 0, 1, 1], n_boot=500)
        >>> d, lo <= d <= hi, lo >= 0
        (0.25, True, True)
    """
    import torch

    diff = _paired(a, b, 1)  # (N,)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    n = diff.shape[0]
    g = torch.Generator().manual_seed(seed)
    per_block = max(1, _BLOCK // n)
    boot = torch.cat([(_counts(n, min(per_block, n_boot - s), g) @ diff) / n for s in range(0, n_boot, per_block)])  # (n_boot,)
    return (float(diff.mean()), *_percentile_95(boot))


def clustered_bootstrap(a: Any, b: Any, *, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean difference over seeds and items, resampling seeds and items both (a crossed bootstrap).

    For scores of whole-pipeline runs (seeds) on shared test items: each resample draws
    ``K`` seeds and ``N`` items with replacement and averages the difference over the
    chosen seed x item cells. The interval covers both the variation between runs and the
    finite test set. With one seed it is `paired_bootstrap` (the same seed gives the same draws).

    Args:
        a: ``(K, N)`` scores of method A per seed and item.
        b: ``(K, N)`` scores of method B; seed ``k`` of A is paired with seed ``k`` of B.
        n_boot: Bootstrap resamples.
        seed: Seeds the resampling.

    Returns:
        ``(mean_diff, lo, hi)``, percentile 95 %.

    Examples:
        >>> d, lo, hi = clustered_bootstrap([[1, 1, 0, 1], [1, 0, 1, 1]], [[1, 0, 0, 1], [0, 0, 1, 1]], n_boot=500)
        >>> d, lo <= d <= hi
        (0.25, True)
    """
    import torch

    diff = _paired(a, b, 2)  # (K, N)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    k, n = diff.shape
    g = torch.Generator().manual_seed(seed)
    per_block = max(1, _BLOCK // max(k, n))
    blocks = []
    for s in range(0, n_boot, per_block):
        rows = min(per_block, n_boot - s)
        items = _counts(n, rows, g)  # (rows, N), drawn first: with K = 1 the draws are paired_bootstrap's
        seeds = _counts(k, rows, g) if k > 1 else torch.ones((rows, 1), dtype=torch.float64)  # (rows, K)
        blocks.append(((seeds @ diff) * items).sum(1) / (k * n))
    return (float(diff.mean()), *_percentile_95(torch.cat(blocks)))


def mcnemar(correct_a: Any, correct_b: Any) -> dict[str, Any]:
    """Exact McNemar test of two classifiers on the same items.

    Args:
        correct_a: ``(N,)`` 0/1 (or bool): whether A got each item right.
        correct_b: ``(N,)`` the same for B.

    Returns:
        ``{"b": A right and B wrong, "c": A wrong and B right, "p": two-sided p-value}``:
        the exact binomial test of ``b`` out of ``b + c`` discordant items against 1/2
        (twice the smaller tail, at most 1; 1 when there are no discordant items).

    Examples:
        >>> mcnemar([1, 1, 1, 1, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0, 0, 1])
        {'b': 6, 'c': 0, 'p': 0.03125}
    """
    ta, tb = _as_float64(correct_a, "correct_a", 1), _as_float64(correct_b, "correct_b", 1)
    if ta.shape != tb.shape:
        raise ValueError(f"correct_a and correct_b must cover the same items: {tuple(ta.shape)} and {tuple(tb.shape)}")
    for what, t in (("correct_a", ta), ("correct_b", tb)):
        if not bool(((t == 0) | (t == 1)).all()):
            raise ValueError(f"{what}: expected 0/1 correctness per item, got values {sorted(set(t.unique().tolist()))[:5]}")
    b = int(((ta == 1) & (tb == 0)).sum())
    c = int(((ta == 0) & (tb == 1)).sum())
    n = b + c
    tail, term = 0, 1  # sum of C(n, i) for i <= min(b, c), in exact integers: 2**n overflows a float
    for i in range(min(b, c) + 1):
        tail += term
        term = term * (n - i) // (i + 1)
    p = min(1.0, 2 * tail / 2**n) if n else 1.0
    return {"b": b, "c": c, "p": p}


def paired_seed_ci(a_per_seed: Sequence[float], b_per_seed: Sequence[float]) -> tuple[float, float, float]:
    """Mean difference over seeds with a 95 % t-interval (`mean_ci` of the per-seed differences).

    Seed ``k`` of A is paired with seed ``k`` of B (the same data split, zoo or run); with
    one seed the interval is the mean itself.

    Examples:
        >>> mean, lo, hi = paired_seed_ci([0.85, 0.86, 0.84], [0.84, 0.84, 0.83])
        >>> round(mean, 4), lo < mean < hi
        (0.0133, True)
    """
    if len(a_per_seed) != len(b_per_seed):
        raise ValueError(f"paired seeds: a has {len(a_per_seed)} values, b {len(b_per_seed)}")
    diffs = [float(x) - float(y) for x, y in zip(a_per_seed, b_per_seed, strict=True)]
    if any(not math.isfinite(d) for d in diffs):
        raise ValueError("paired_seed_ci: a value is NaN or infinite")
    return mean_ci(diffs)
