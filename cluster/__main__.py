import sys

from raylm.cluster.cli import main

sys.exit(main())
