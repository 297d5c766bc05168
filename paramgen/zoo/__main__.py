"""Command line: ``python -m paramgen.zoo build|import|info``.

    python -m paramgen.zoo build --preset cnn-fashion-digits --out zoos/cnn
    python -m paramgen.zoo import ckpts/ --task wine --out zoos/mine
    python -m paramgen.zoo import a.safetensors b.safetensors --task wine --task iris --out zoos/mine
    python -m paramgen.zoo import ckpts/ --metadata ckpts/meta.toml --out zoos/mine
    python -m paramgen.zoo info zoos/cnn

``import`` takes ``.safetensors`` files, Hugging Face model folders, PEFT adapter folders,
or folders of them. ``--metadata`` names a JSON or TOML file mapping each checkpoint's file
or folder name (or its stem) to its ``task`` and anything else `ZooWriter.add` records,
e.g. ``[seed0]`` / ``task = "wine"`` / ``epoch = 20`` / ``metrics = {test_acc = 0.97}``.
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

from paramgen.io import read_json
from paramgen.zoo.build import PRESETS, build_zoo, preset
from paramgen.zoo.store import Zoo
from paramgen.zoo.writer import ZooWriter, _expand

__all__ = ["main"]


def _info(zoo: Zoo) -> str:
    summary = zoo.summary()
    lines = [repr(zoo)]
    for key, value in summary.items():
        lines.append(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")
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
    writer = ZooWriter(args.out)
    from tqdm.auto import tqdm

    ids = set()
    for path, task in tqdm(items, desc="import", disable=args.no_progress):
        entry = dict(metadata.get(path.name, metadata.get(path.stem, {})))
        task = entry.pop("task", task)
        if task is None:
            raise ValueError(f"no task for {path}: give --task, or a 'task' for {path.name!r} in --metadata")
        if args.run_id is not None:
            entry.setdefault("run_id", args.run_id)
        ids.add(writer.add(path, task=task, **entry).id)
    return writer.zoo().filter(where=lambda c: c.id in ids)


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m paramgen.zoo") -> int:
    """Run the zoo command line; return the exit status (2 on bad input, with the reason on stderr).

    Args:
        argv: Arguments after the program name (default: ``sys.argv[1:]``).
        prog: Program name shown in usage and error lines (``"paramgen zoo"`` from the
            console script).
    """
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train the missing runs of a preset into a zoo folder (resumable)")
    b.add_argument("--preset", required=True, choices=sorted(PRESETS))
    b.add_argument("--out", required=True, help="zoo folder")
    b.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    b.add_argument("--limit", type=int, default=None, help="train only the first N runs of the plan")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    m = sub.add_parser(
        "import",
        help="write checkpoints you have (safetensors files, Hugging Face or PEFT folders) into a zoo folder",
        description="Write checkpoints into a zoo folder: .safetensors files, Hugging Face model folders, PEFT adapter "
        "folders, or folders of them. Pickled weights (.bin, .pt) are refused.",
    )
    m.add_argument("sources", nargs="+", help="checkpoint files or folders")
    m.add_argument("--out", required=True, help="zoo folder (created if needed; existing runs are kept)")
    m.add_argument("--task", action="append", help="task of the checkpoints: once for all, or once per source in order")
    m.add_argument("--metadata", help="JSON or TOML file: checkpoint file/folder name (or stem) -> {task, epoch, metrics, run_id, ...}")
    m.add_argument("--run-id", default=None, help="put every checkpoint in this one run, as successive epochs")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    i = sub.add_parser("info", help="summarize a zoo folder")
    i.add_argument("path")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "build":
            runs = preset(args.preset)
            if args.limit is not None:
                runs = runs[: args.limit]
            start = time.perf_counter()
            zoo = build_zoo(args.out, runs, workers=args.workers, progress=not args.no_progress)
            print(_info(zoo))
            print(f"  wall time: {time.perf_counter() - start:.1f} s")
        elif args.command == "import":
            print(_info(_import(args)))
        else:
            zoo = Zoo.open(args.path)
            print(json.dumps(zoo.summary(), indent=1) if args.json else _info(zoo))
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"{prog} {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
