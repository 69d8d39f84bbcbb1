"""``python -m ftops.cli``: the ``ftops`` command."""

import sys

from ftops.cli import main

sys.exit(main())
