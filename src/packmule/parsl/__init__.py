"""Parsl integration: ``packmule.WorkQueueExecutor``, a drop-in for Parsl's own.

Importing this package imports Parsl (``pip install 'packmule[parsl]'``).
"""

from .executor import WorkQueueExecutor
from .radio import PackmuleRadio

__all__ = ["PackmuleRadio", "WorkQueueExecutor"]
