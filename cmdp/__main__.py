"""``python -m cmdp``: the same command line as the ``cmdp`` console script."""

import sys

from cmdp.cli import main

if __name__ == "__main__":
    sys.exit(main())
