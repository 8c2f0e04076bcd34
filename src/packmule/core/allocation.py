"""How much of a given worker a task's request gets (its "box").

Work Queue's proportional rule (notes: workqueue_reference.md, section 2.3),
with one deliberate change: values the user specified are used as they are,
never rounded up to a whole fraction of the worker. Only the *unspecified*
resources are filled in, in proportion to the largest specified fraction.

* Nothing specified: the whole worker, GPUs included.
* Otherwise p = max(specified / worker) over the specified resources; p > 1
  means the task never fits this worker. The fill fraction is p rounded up to
  a whole fraction, 1/floor(1/p), so that tasks of one shape tile the worker:
  unspecified cores get max(1, floor(cores * fill)) (0 when the task asks
  for GPUs), memory and disk floor(worker * fill), GPUs 0.
* All specified values zero: the unspecified ones take the whole worker.
"""

from __future__ import annotations

import math

from ..resources import FIELDS, Resources


def box(request: Resources, worker: Resources) -> Resources | None:
    """The allocation ``request`` gets on a worker of size ``worker``, or None if it never fits."""
    if request.is_empty:
        return worker.filled()
    p = 0.0
    for name in FIELDS:
        want = getattr(request, name)
        if want is None or want == 0:
            continue
        have = getattr(worker, name) or 0
        if have <= 0 or want > have:
            return None
        p = max(p, want / have)
    fill = 1.0 if p == 0 else 1.0 / math.floor(1.0 / p)

    def filled(name: str) -> int:
        want = getattr(request, name)
        if want is not None:
            return int(want)
        have = getattr(worker, name) or 0
        if name == "gpus":
            return 0
        if name == "cores":
            if request.gpus:
                return 0
            return max(1, math.floor(have * fill)) if have else 0
        return math.floor(have * fill)

    return Resources._raw(*(filled(n) for n in FIELDS))


def with_minimum(allocation: Resources | None, minimum: Resources) -> Resources | None:
    """Raise a box to a category's explicit minimum (Work Queue: box = max(box, min))."""
    if allocation is None or minimum.is_empty:
        return allocation
    vals = [a if lo is None or (a is not None and a >= lo) else lo
            for a, lo in zip(allocation.astuple(), minimum.astuple(), strict=True)]
    return Resources._raw(*(v or 0 for v in vals))
