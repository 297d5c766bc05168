"""The arguments of ``paramgen zoo`` / ``python -m paramgen.zoo`` (standard library only, so
that ``--help`` answers without importing torch; the commands run in `paramgen.cli.zoo_commands`)."""

from __future__ import annotations

import argparse

from paramgen.cli._formatter import HelpFormatter

__all__ = ["DESCRIPTION", "PRESET_NAMES", "add_arguments", "build_parser"]

DESCRIPTION = """\
Build, import or summarize a zoo folder (paramgen.zoo.Zoo).

    paramgen zoo build --preset cnn-fashion-digits --out zoos/cnn
    paramgen zoo import ckpts/ --task wine --out zoos/mine
    paramgen zoo import a.safetensors b.safetensors --task wine --task iris --out zoos/mine
    paramgen zoo import ckpts/ --metadata ckpts/meta.toml --out zoos/mine
    paramgen zoo info zoos/cnn

``import`` takes .safetensors files, Hugging Face model folders, PEFT adapter folders, or
folders of them. --metadata names a JSON or TOML file mapping each checkpoint's file or
folder name (or its stem) to its task and anything else ZooWriter.add records, e.g.
[seed0] / task = "wine" / epoch = 20 / metrics = {test_acc = 0.97}.
"""

#: The names of `paramgen.zoo.PRESETS` (kept here so that building the parser imports no
#: torch; a test keeps the two equal).
PRESET_NAMES = ("cnn-fashion-digits", "mlp-mnist1d", "tiny")

_BUILD = """\
Train the runs of a preset that the zoo folder lacks and write them (resumable: an
interrupted build continues where it stopped; finished runs are skipped).
"""
_IMPORT = """\
Write checkpoints into a zoo folder: .safetensors files, Hugging Face model folders, PEFT
adapter folders, or folders of them. Pickled weights (.bin, .pt) are refused.
"""
_INFO = "Summarize a zoo folder: checkpoints, runs, tasks, architectures, epochs and recorded test accuracy."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``build``, ``import`` and ``info`` subcommands to ``parser`` (the chosen one
    lands in ``args.zoo_command``)."""
    sub = parser.add_subparsers(dest="zoo_command", required=True, metavar="COMMAND")
    b = sub.add_parser("build", help="train the missing runs of a preset into a zoo folder (resumable)", description=_BUILD, formatter_class=HelpFormatter)
    b.add_argument("--preset", required=True, choices=PRESET_NAMES, help="the run plan (paramgen.zoo.preset)")
    b.add_argument("--out", required=True, help="zoo folder")
    b.add_argument("--workers", type=int, default=2, help="worker processes")
    b.add_argument("--limit", type=int, default=None, help="train only the first N runs of the plan")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    m = sub.add_parser(
        "import", help="write checkpoints you have (safetensors files, Hugging Face or PEFT folders) into a zoo folder", description=_IMPORT,
        formatter_class=HelpFormatter,
    )  # fmt: skip
    m.add_argument("sources", nargs="+", help="checkpoint files or folders")
    m.add_argument("--out", required=True, help="zoo folder (created if needed; existing runs are kept)")
    m.add_argument("--task", action="append", help="task of the checkpoints: once for all, or once per source in order")
    m.add_argument("--metadata", help="JSON or TOML file: checkpoint file/folder name (or stem) -> {task, epoch, metrics, run_id, ...}")
    m.add_argument("--run-id", default=None, help="put every checkpoint in this one run, as successive epochs")
    m.add_argument("--mixed-architectures", action="store_true",
                   help="accept checkpoints of several architectures in the zoo (a family); by default another architecture than the others' or the zoo's is refused")  # fmt: skip
    m.add_argument("--no-progress", action="store_true", help="no progress bars")
    i = sub.add_parser("info", help="summarize a zoo folder", description=_INFO, formatter_class=HelpFormatter)
    i.add_argument("path", help="zoo folder")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")


def build_parser(prog: str = "python -m paramgen.zoo") -> argparse.ArgumentParser:
    """The parser of ``python -m paramgen.zoo``."""
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, formatter_class=HelpFormatter)
    add_arguments(parser)
    return parser
