"""``python -m paramgen.zoo build|import|info``: the same commands as ``paramgen zoo``.

The commands live with the rest of the command line (`paramgen.cli.zoo_commands`); this
entry point is the command line's too, which is why it alone in the zoo package imports
`paramgen.cli` (the one import-linter exception, stated in ``pyproject.toml``).
"""

from __future__ import annotations

import sys

from paramgen.cli.zoo_commands import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
