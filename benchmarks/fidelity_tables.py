"""Markdown tables of a ``benchmarks.fidelity`` results.json, as quoted in docs/fidelity.md.

``python -m benchmarks.fidelity_tables docs/results/fidelity-default.json``
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

METRICS = ("acc", "gain_recovered", "novelty_l2", "novelty_fn", "diversity_fn", "error_iou")
ORDER = (
    "frozen base + logistic regression",
    "original (fine-tuned)",
    "tokenizer reconstruction",
    "generated",
    "soup (mean of the task's deltas)",
    "per-coordinate Gaussian",
    "nearest + noise (L2 novelty 0.5)",
    "nearest + noise (L2 novelty 1)",
    "nearest + noise (L2 novelty 4)",
    "per-tensor mean (of the soup's weights)",
    "another task's delta + this head",
)


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    if row["n"] == 1:
        return f"{row['value']:.3f}"
    return f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def tables(data: dict[str, Any]) -> str:
    rows = {(r["method"], r["task"], r["metric"]): r for r in data["rows"]}
    tasks = [t for t in data["config"]["test_items"]] + ["pooled"]
    out: list[str] = []
    for task in tasks:
        n = data["config"]["test_items"].get(task)
        out.append(f"\n**{task}**" + (f" ({n} test tweets)" if n else " (both tasks; values per model)") + "\n")
        out.append("| method | n | " + " | ".join(METRICS) + " |")
        out.append("|---|---:|" + "---:|" * len(METRICS))
        for method in ORDER:
            acc = rows.get((method, task, "acc"))
            if acc is None:
                continue
            out.append(f"| {method} | {acc['n']} | " + " | ".join(_cell(rows.get((method, task, m))) for m in METRICS) + " |")
    out.append("\n**Paired differences, generated minus baseline (accuracy)**\n")
    out.append("| comparison | task | over test items | over seeds x items | over pipeline seeds |")
    out.append("|---|---|---:|---:|---:|")
    for (method, task, metric), r in rows.items():
        if metric != "acc_diff_items":
            continue
        sx = rows.get((method, task, "acc_diff_seeds_x_items"))
        sd = rows.get((method, task, "acc_diff_seeds"))
        label = method + (f" ({r['baseline']})" if "best" in method else "")
        out.append(f"| {label} | {task} | {_cell(r)} | {_cell(sx)} | {_cell(sd)} |")
    out.append("\n**Ablation: a plain chunk VAE on absolute weights (no base), tokenizer only**\n")
    out.append("| compression | task | rel. L2 to original | error / delta norm | acc |")
    out.append("|---:|---|---:|---:|---:|")
    for (method, task, metric), r in rows.items():
        if method.startswith("absolute weights") and metric == "acc":
            out.append(
                f"| {r.get('compression')}x | {task} | {_cell(rows[(method, task, 'rel_l2_to_original')])} | "
                f"{_cell(rows[(method, task, 'error_over_delta_norm')])} | {_cell(r)} |"
            )
    out.append(f"\nwall {data['wall_s'] / 60:.1f} min, peak RSS {data['peak_rss_mb'] / 1024:.2f} GiB")
    return "\n".join(out)


def print_tables(argv: Sequence[str] | None, *, usage: str | None, tables: Callable[[dict[str, Any]], str]) -> int:
    """The command line of a ``*_tables`` module: one results.json path in, its tables printed
    (exit 2 with the usage line, the docstring's last line, otherwise)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print((usage or "").strip().splitlines()[-1], file=sys.stderr)  # the usage line
        return 2
    print(tables(json.loads(Path(args[0]).read_text())))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return print_tables(argv, usage=__doc__, tables=tables)


if __name__ == "__main__":
    raise SystemExit(main())
