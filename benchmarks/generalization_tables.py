"""``python -m benchmarks.generalization_tables``: issue 22's headline table from the harnesses' results.

Generalization beyond the zoo is measured by five harness runs; each stores its own
paired difference "generated minus the best simple baseline" (the baseline with the
highest mean in that run, named in the row). This module reads those rows from the
committed ``results.json`` files and prints them as one markdown table (the table of
``docs/generalization.md``); it computes nothing new, so the table cannot drift from the
runs.

Usage::

    python -m benchmarks.generalization_tables                 # the committed runs
    python -m benchmarks.generalization_tables --fewshot runs/fewshot-quick/results.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

__all__ = ["Headline", "HEADLINES", "headline_row", "table", "main"]


@attrs.frozen
class Headline:
    """Where one headline's paired difference lives in a harness's ``results.json``.

    Attributes:
        name: The headline, as the table shows it.
        option: The command-line option that points at another results file.
        path: The committed results file.
        method: The ``method`` of the difference row.
        task: Its ``task``.
        metric: Its ``metric`` (the seeds x items interval).
        seed_metric: The row with the t-interval over seed means (``None``: the same row
            carries ``seed_ci`` or ``seed_ci_low`` / ``seed_ci_high``).
        unit: ``"fraction"`` (values in [0, 1], shown in points) or ``"points"``.
    """

    name: str
    option: str
    path: str
    method: str
    task: str
    metric: str
    seed_metric: str | None = None
    unit: str = "fraction"


HEADLINES: tuple[Headline, ...] = (
    Headline("fewshot 1-shot (novel classes)", "fewshot", "docs/results/fewshot-quick-3seeds-guided.json",
             "generated (best of 5 by support) - best baseline", "novel 5-way 1-shot", "acc_diff_seeds_x_items", "acc_diff_seeds"),
    Headline("fewshot 5-shot (novel classes)", "fewshot", "docs/results/fewshot-quick-3seeds-guided.json",
             "generated (best of 5 by support) - best baseline", "novel 5-way 5-shot", "acc_diff_seeds_x_items", "acc_diff_seeds"),
    Headline("zeroshot, unseen dataset (digits)", "zeroshot", "docs/results/zeroshot-quick-3seeds.json",
             "generated best-of-n (support) - best baseline", "unseen dataset (digits)", "acc_diff_seeds_x_items", "acc_diff_seeds"),
    Headline("retrieval, fresh draws (images)", "retrieval", "docs/results/retrieval-quick-3seeds.json",
             "generated best-of-n (val) - best simple baseline", "paired over seeds x tasks (image)", "test_acc_diff"),
    Headline("retrieval, fresh draws (signals)", "retrieval", "docs/results/retrieval-quick-3seeds.json",
             "generated best-of-n (val) - best simple baseline", "paired over seeds x tasks (signal)", "test_acc_diff"),
    Headline("LoRA, held-out tasks (mean of 6)", "lora", "docs/results/lora-default.json",
             "generated - best baseline", "mean over held-out tasks", "diff_points", unit="points"),
)  # fmt: skip


def _find(rows: Sequence[Mapping[str, Any]], method: str, task: str, metric: str, path: str) -> Mapping[str, Any]:
    hits = [r for r in rows if r.get("method") == method and r.get("task") == task and r.get("metric") == metric]
    if len(hits) != 1:
        raise ValueError(f"{path}: expected one row with method={method!r}, task={task!r}, metric={metric!r}; found {len(hits)}")
    return hits[0]


def headline_row(h: Headline, results: Mapping[str, Any], path: str) -> dict[str, Any]:
    """One table row: the difference and its intervals in points, the baseline, seeds and size.

    Raises:
        ValueError: The results file lacks the row (or has it twice).
    """
    rows = results.get("rows", [])
    row = _find(rows, h.method, h.task, h.metric, path)
    k = 100.0 if h.unit == "fraction" else 1.0
    if h.seed_metric is not None:
        s = _find(rows, h.method, h.task, h.seed_metric, path)
        seed_ci, n_seeds = (s["ci_low"], s["ci_high"]), s.get("n")
    elif "seed_ci" in row:
        seed_ci, n_seeds = tuple(row["seed_ci"]), None
    else:
        seed_ci, n_seeds = (row.get("seed_ci_low"), row.get("seed_ci_high")), row.get("seeds")
    config = results.get("config", {})
    seeds = n_seeds or config.get("pipeline_seeds") or config.get("seeds")
    if isinstance(seeds, (list, tuple)):
        seeds = len(seeds)
    return {
        "headline": h.name,
        "baseline": row.get("baseline", "?"),
        "diff": k * row["value"],
        "ci": (k * row["ci_low"], k * row["ci_high"]),
        "seed_ci": tuple(None if v is None else k * v for v in seed_ci),
        "seeds": seeds,
        "size": config.get("size", "?"),
        "path": path,
    }


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.1f}"


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The markdown table of `headline_row` rows (differences in accuracy points)."""
    out = [
        "| headline | best simple baseline | generated - baseline (points) | 95 % CI (seeds x items) | 95 % CI (seed means) | seeds | size | goal >= 0 | results |",
        "|---|---|---:|---|---|---:|---|---|---|",
    ]
    for r in rows:
        met = "met" if r["diff"] >= 0 else f"missed by {-r['diff']:.1f}"
        out.append(
            f"| {r['headline']} | {r['baseline']} | {r['diff']:+.1f} | [{_fmt(r['ci'][0])}, {_fmt(r['ci'][1])}] | "
            f"[{_fmt(r['seed_ci'][0])}, {_fmt(r['seed_ci'][1])}] | {r['seeds']} | {r['size']} | {met} | `{r['path']}` |"
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> str:
    """Print (and return) the table; ``--<harness> PATH`` replaces a committed file."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.generalization_tables", description=__doc__.split("\n\n")[0])
    for option in sorted({h.option for h in HEADLINES}):
        p.add_argument(f"--{option}", default=None, help=f"the {option} results.json (default: the committed run)")
    args = p.parse_args(argv)
    rows = []
    for h in HEADLINES:
        path = getattr(args, h.option) or h.path
        rows.append(headline_row(h, json.loads(Path(path).read_text()), path))
    text = table(rows)
    print(text)
    return text


if __name__ == "__main__":
    main()
