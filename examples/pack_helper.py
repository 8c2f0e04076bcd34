"""A local helper module next to ``pack_demo.py``: not installed anywhere, so
a worker can only import it from the environment pack."""

from __future__ import annotations

import platform
import sys


def where_am_i() -> str:
    return f"Python {platform.python_version()} at {sys.executable}"
