"""The zoo commands: ``paramgen zoo build|import|info`` (also ``python -m paramgen.zoo``).

    python -m paramgen.zoo build --preset cnn-fashion-digits --out zoos/cnn
    python -m paramgen.zoo import ckpts/ --task wine --out zoos/mine
    python -m paramgen.zoo import a.safetensors b.safetensors --task wine --task iris --out zoos/mine
    python -m paramgen.zoo import ckpts/ --metadata ckpts/meta.toml --out zoos/mine
    python -m paramgen.zoo info zoos/cnn

The arguments are `paramgen.cli.zoo`'s (``--help`` imports no torch); this module runs
the commands (imported when one runs).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with the tomli backport
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

from paramgen.cli.zoo import build_parser
from paramgen.io import read_json
from paramgen.zoo.build import build_zoo, preset
from paramgen.zoo.sources import _expand
from paramgen.zoo.store import Zoo
from paramgen.zoo.writer import ZooWriter

__all__ = ["main", "run"]


_NO_ACC = "n/a (no test accuracy recorded; import with --metadata giving metrics = {test_acc = ...})"


def _summary(zoo: Zoo) -> dict[str, Any]:
    """`Zoo.summary` with the accuracy statistics ``None`` when no checkpoint recorded a
    test accuracy (imported checkpoints carry only the metrics given to them), and the
    number of checkpoints that did."""
    summary = dict(zoo.summary())
    recorded = sum("test_acc" in c.metrics for c in zoo)
    if recorded == 0:  # Zoo.summary's mean over no values is NaN
        summary.update(test_acc_mean=None, test_acc_min=None)
    return {**summary, "test_acc_recorded": recorded}


def _info(zoo: Zoo) -> str:
    summary = _summary(zoo)
    recorded = summary.pop("test_acc_recorded")
    lines = [repr(zoo)]
    for key, value in summary.items():
        if key.startswith("test_acc") and value is None:
            lines.append(f"  {key}: {_NO_ACC}")
        elif isinstance(value, float):
            part = f" (over the {recorded} of {len(zoo)} checkpoints that recorded one)" if key.startswith("test_acc") and recorded < len(zoo) else ""
            lines.append(f"  {key}: {value:.4f}{part}")
        else:
            lines.append(f"  {key}: {value}")
    return "\n".join(lines)


def _read_metadata(path: str) -> dict[str, dict[str, Any]]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"metadata file {file} does not exist")
    if file.suffix == ".toml":
        try:
            data: Any = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{file} is not valid TOML: {err}") from None
    else:
        data = read_json(file)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{file} must map each checkpoint's file or folder name to a table/object of its metadata, e.g. {{\"seed0\": {{\"task\": \"wine\"}}}}")
    return data


def _import(args: argparse.Namespace) -> Zoo:
    """Expand the sources, give each its task and metadata, write them with `ZooWriter`."""
    metadata = _read_metadata(args.metadata) if args.metadata else {}
    tasks = args.task or []
    if tasks and len(tasks) not in (1, len(args.sources)):
        raise ValueError(f"got {len(tasks)} --task for {len(args.sources)} sources; expected one --task for all or one per source")
    items: list[tuple[Path, str | None]] = []
    for i, source in enumerate(args.sources):
        task = tasks[0] if len(tasks) == 1 else tasks[i] if tasks else None
        items.extend((Path(str(p)), task) for p in _expand(source))
    entries: list[tuple[Path, dict[str, Any]]] = []
    for path, task in items:
        entry = dict(metadata.get(path.name, metadata.get(path.stem, {})))
        entry.setdefault("task", task)
        if entry["task"] is None:
            raise ValueError(f"no task for {path}: give --task, or a 'task' for {path.name!r} in --metadata")
        if args.run_id is not None:
            entry.setdefault("run_id", args.run_id)
        entries.append((path, entry))
    # All or nothing: every source is read and checked before anything is written.
    writer = ZooWriter(args.out, mixed_architectures=args.mixed_architectures)
    ids = {c.id for c in writer.add_all(entries, progress=not args.no_progress)}
    return writer.zoo().filter(where=lambda c: c.id in ids)


def run(args: argparse.Namespace, *, prog: str = "python -m paramgen.zoo") -> int:
    """Run the parsed ``build|import|info`` command; return the exit status (2 on bad input,
    with the reason on stderr)."""
    try:
        if args.zoo_command == "build":
            runs = preset(args.preset)
            if args.limit is not None:
                runs = runs[: args.limit]
            start = time.perf_counter()
            zoo = build_zoo(args.out, runs, workers=args.workers, progress=not args.no_progress)
            print(_info(zoo))
            print(f"  wall time: {time.perf_counter() - start:.1f} s")
        elif args.zoo_command == "import":
            print(_info(_import(args)))
        else:
            zoo = Zoo.open(args.path)
            print(json.dumps(_summary(zoo), indent=1, allow_nan=False) if args.json else _info(zoo))
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"{prog} {args.zoo_command}: error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m paramgen.zoo") -> int:
    """Run the zoo command line; return the exit status (2 on bad input, with the reason on stderr).

    Args:
        argv: Arguments after the program name (default: ``sys.argv[1:]``).
        prog: Program name shown in usage and error lines.
    """
    from paramgen.cli.progress import progress_bars

    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with progress_bars(not getattr(args, "no_progress", False)):
        return run(args, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
