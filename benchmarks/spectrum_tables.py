"""Markdown tables of a ``benchmarks.spectrum`` results.json, as quoted in docs/spectrum.md.

``python -m benchmarks.spectrum_tables docs/results/spectrum-default.json``
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks import fidelity_tables
from benchmarks.spectrum import METHODS, SWAPPED

SEEDS, ITEMS = "test_acc diff (ft seeds)", "test_acc diff (ft seeds x items)"


def _cell(row: dict[str, Any] | None, digits: int = 3) -> str:
    if row is None:
        return ""
    if row["n"] == 1:
        return f"{row['value']:.{digits}f}"
    return (
        f"{row['value']:+.{digits}f} [{row['ci_low']:+.{digits}f}, {row['ci_high']:+.{digits}f}]"
        if "diff" in row["metric"]
        else (f"{row['value']:.{digits}f} [{row['ci_low']:.{digits}f}, {row['ci_high']:.{digits}f}]")
    )


def _mean(row: dict[str, Any] | None, digits: int = 3) -> str:
    return "" if row is None else f"{row['value']:.{digits}f}"


def tables(data: dict[str, Any]) -> str:
    rows = {(r["method"], r["task"], r["metric"]): r for r in data["rows"]}
    tasks = list(data["config"]["tasks"])
    out: list[str] = []
    for task in tasks:
        n_test = rows[("base (fine-tuned)", task, "test_acc")].get("n_test")
        out.append(f"\n#### {task} ({n_test} test tweets)\n")
        out.append("| method | test acc | Δ vs base, over ft seeds | Δ vs base, over ft seeds x items | val acc after | layers accepted | rel. L2 to base | distance / ‖D‖ | corr. with base |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        out.append(f"| base (fine-tuned) | {_cell(rows[('base (fine-tuned)', task, 'test_acc')])} | | | {_mean(rows[('base (fine-tuned)', task, 'val_acc')])} | | | | |")
        for m in METHODS:
            k = f"refined: {m}"
            test = rows[(k, task, "test_acc")]
            skipped = sum(bool(s) for s in test.get("skipped", []))
            label = k + (f" (skipped in {skipped} of {test['n']} seeds)" if skipped else "")
            out.append(
                f"| {label} | {_cell(test)} | {_cell(rows.get((k + ' - base', task, SEEDS)))} | {_cell(rows.get((k + ' - base', task, ITEMS)))} | "
                f"{_mean(rows.get((k, task, 'val_acc')))} | {_mean(rows.get((k, task, 'layers_accepted')), 1)} | "
                f"{_mean(rows.get((k, task, 'candidates_rel_l2')), 4)} | {_mean(rows.get((k, task, 'candidates_over_delta')), 2)} | "
                f"{_mean(rows.get((k, task, 'candidates_corr')), 4)} |"
            )
        for m in SWAPPED:
            k = f"swapped: {m}"
            out.append(f"| {k} (no greedy) | {_cell(rows.get((k, task, 'test_acc')))} | {_cell(rows.get((k + ' - base', task, SEEDS)))} | {_cell(rows.get((k + ' - base', task, ITEMS)))} | | | | | |")
        rec = {s: rows.get(("reconstruction of the base", task, s)) for s in ("rel_l2", "over_delta", "corr")}
        ptm = {s: rows.get(("per-tensor mean of the base", task, s)) for s in ("rel_l2", "over_delta", "corr")}
        out.append(
            f"\nReconstruction of the base by the generator's tokenizer: rel. L2 {_mean(rec['rel_l2'], 5)}, distance / ‖D‖ "
            f"{_mean(rec['over_delta'], 3)}, correlation {_mean(rec['corr'], 5)}; the per-tensor mean: rel. L2 {_mean(ptm['rel_l2'], 3)}, "
            f"distance / ‖D‖ {_mean(ptm['over_delta'], 1)}, correlation {_mean(ptm['corr'], 3)} (means over fine-tuning seeds)."
        )
    out.append("\n#### Paired differences, refined generator minus each other pool\n")
    out.append("| comparison | task | over ft seeds | over ft seeds x items |")
    out.append("|---|---|---:|---:|")
    for task in [*tasks, "all tasks"]:
        for m in METHODS[1:]:
            k = f"refined: generator - {m}"
            if (k, task, SEEDS) in rows:
                out.append(f"| {k} | {task} | {_cell(rows[(k, task, SEEDS)])} | {_cell(rows.get((k, task, ITEMS)))} |")
    if any(t == "all tasks" for _, t, _ in rows):
        out.append("\n#### All tasks (each fine-tuning seed's items of both tasks together)\n")
        out.append("| comparison | over ft seeds | over ft seeds x items |")
        out.append("|---|---:|---:|")
        for m in METHODS:
            k = f"refined: {m} - base"
            out.append(f"| {k} | {_cell(rows.get((k, 'all tasks', SEEDS)))} | {_cell(rows.get((k, 'all tasks', ITEMS)))} |")
    out.append(f"\nwall {data['wall_s'] / 60:.1f} min" + (f", peak RSS {data['peak_rss_mb'] / 1024:.2f} GiB" if "peak_rss_mb" in data else ""))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    return fidelity_tables.print_tables(argv, usage=__doc__, tables=tables)


if __name__ == "__main__":
    raise SystemExit(main())
