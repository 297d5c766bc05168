"""``python -m paramgen.cli``: the ``paramgen`` command line."""

import sys

from paramgen.cli import main

if __name__ == "__main__":
    sys.exit(main())
