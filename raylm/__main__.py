"""`python -m raylm ...`: the same as the `raylm` command."""

import sys

from raylm.cluster.cli import main

if __name__ == "__main__":
    sys.exit(main())
