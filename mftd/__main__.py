"""``python -m mftd``: the same as the ``mftd`` command."""

import sys

from mftd.cli import main

sys.exit(main())
