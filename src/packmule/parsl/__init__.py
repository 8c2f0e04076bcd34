"""Parsl integration: ``packmule.WorkQueueExecutor``, a drop-in for Parsl's own.

Importing this package imports Parsl (``pip install 'packmule[parsl]'``).
"""

try:
    import parsl as _parsl  # noqa: F401  (a clear message when Parsl is missing)
except ImportError as _exc:
    import sys as _sys

    if _exc.name == "parsl":
        raise ModuleNotFoundError(
            "packmule.WorkQueueExecutor needs Parsl, which is not installed in this "
            f"environment ({_sys.prefix}): pip install 'packmule[parsl]'", name="parsl",
        ) from _exc
    raise ImportError(
        f"Parsl is installed but cannot be imported ({_exc}); reinstall it with packmule's "
        "supported versions: pip install --force-reinstall 'packmule[parsl]'", name=_exc.name,
    ) from _exc

from .executor import WorkQueueExecutor
from .radio import PackmuleRadio

__all__ = ["PackmuleRadio", "WorkQueueExecutor"]
