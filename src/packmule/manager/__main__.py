"""``python -m packmule.manager FD``: the manager's loop, started by :class:`Manager`."""

import sys

from .loop import main

sys.exit(main())
