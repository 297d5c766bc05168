"""``python -m paramgen``: the ``paramgen`` command line (see `paramgen.cli`)."""

import sys

from paramgen.cli import main

if __name__ == "__main__":
    sys.exit(main())
