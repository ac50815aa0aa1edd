"""``python -m fastpq``: the command line of :mod:`fastpq.cli`."""

import sys

from fastpq.cli import main

sys.exit(main())
