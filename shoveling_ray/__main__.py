"""``python -m shoveling_ray``: the ``shoveling`` command."""

import sys

from .cli import main

sys.exit(main())
