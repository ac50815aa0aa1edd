import sys

from fastpq.cli import main

sys.exit(main())
