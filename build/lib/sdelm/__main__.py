"""``python -m sdelm``: the command line (see :mod:`sdelm.cli`)."""

import sys

from sdelm.cli import main

sys.exit(main())
