"""Command line: ``python -m paramgen.zoo build|info``.

    python -m paramgen.zoo build --preset cnn-fashion-digits --out zoos/cnn
    python -m paramgen.zoo info zoos/cnn
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence

from paramgen.zoo.build import PRESETS, build_zoo, preset
from paramgen.zoo.store import Zoo

__all__ = ["main"]


def _info(zoo: Zoo) -> str:
    summary = zoo.summary()
    lines = [repr(zoo)]
    for key, value in summary.items():
        lines.append(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paramgen.zoo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train the missing runs of a preset into a zoo folder (resumable)")
    b.add_argument("--preset", required=True, choices=sorted(PRESETS))
    b.add_argument("--out", required=True, help="zoo folder")
    b.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    b.add_argument("--limit", type=int, default=None, help="train only the first N runs of the plan")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    i = sub.add_parser("info", help="summarize a zoo folder")
    i.add_argument("path")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "build":
        runs = preset(args.preset)
        if args.limit is not None:
            runs = runs[: args.limit]
        start = time.perf_counter()
        zoo = build_zoo(args.out, runs, workers=args.workers, progress=not args.no_progress)
        print(_info(zoo))
        print(f"  wall time: {time.perf_counter() - start:.1f} s")
    else:
        zoo = Zoo.open(args.path)
        print(json.dumps(zoo.summary(), indent=1) if args.json else _info(zoo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
