"""The help formatter of every ``paramgen`` parser (standard library only: ``--help`` must
not import torch)."""

from __future__ import annotations

import argparse

__all__ = ["HelpFormatter"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; each option's default shown once.

    An option's help gets ``(default: X)`` appended unless it says its default itself
    (the word "default" in its help), takes no value (a switch, ``-v``) or has no
    default worth showing (``None``, an empty list).
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or action.nargs == 0
            or "default" in text.lower()
            or default is None
            or default == []
            or default is argparse.SUPPRESS
        ):
            return text
        return f"{text} (default: %(default)s)"
