"""After an exhaustion: retry bigger, or fail and why (the scheduler's and the simulator's rule)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from ...resources import FIELDS, Resources
from .config import CategoryConfig

__all__ = ["MAX_EXHAUSTIONS", "Decision", "GiveUp", "after_exhaustion", "exceeds_explicit_limit"]

#: How often a task may exhaust its allocation and be retried bigger before it
#: fails (each retry needs a larger allocation, so this is only a backstop).
MAX_EXHAUSTIONS = 10


class GiveUp(enum.Enum):
    """Why an exhausted task fails instead of retrying (checked in this order)."""

    LARGEST = "largest"
    """It already had the largest worker's worth of something it exceeded: no retry can
    give it more."""
    EXPLICIT = "explicit"
    """It went over an explicit value: its own, or where it gave none, its category's max."""
    TOO_MANY = "too_many"
    """It exhausted its allocation more than :data:`MAX_EXHAUSTIONS` times."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after an exhaustion."""

    #: What the attempt is learned from: what was measured, with each exceeded resource
    #: at least its allocation + 1 (whatever the last reading said).
    used: Resources
    #: Why the task fails; None: it retries bigger.
    give_up: GiveUp | None = None


def exceeds_explicit_limit(task_request: Resources, category_max: Resources,
                           measured: Resources) -> list[str]:
    """Resources whose measured value is above the task's explicit value or, where the
    task gave none, the category's explicit max."""
    out = []
    for name, m, want, cap in zip(FIELDS, measured.astuple(), task_request.astuple(),
                                  category_max.astuple(), strict=True):
        limit = want if want is not None else cap
        if limit is not None and m is not None and m > limit:
            out.append(name)
    return out


def after_exhaustion(config: CategoryConfig, task_request: Resources, allocation: Resources,
                     measured: Resources | None, exceeded: Sequence[str],
                     largest_worker: Resources, exhaustions: int) -> Decision:
    """An attempt with ``allocation`` used more of ``exceeded`` than it had (``measured``:
    the worker's reading, if any); ``exhaustions`` counts the task's exhaustions, this
    one included."""
    fields = (measured or Resources()).as_dict()
    for r in exceeded:
        fields[r] = max(fields[r] or 0, (getattr(allocation, r) or 0) + 1)
    used = Resources(**fields)
    if any((getattr(allocation, r) or 0) >= (getattr(largest_worker, r) or 0)
           for r in exceeded):
        return Decision(used, GiveUp.LARGEST)
    if any(r in exceeded for r in exceeds_explicit_limit(task_request, config.max, used)):
        return Decision(used, GiveUp.EXPLICIT)
    if exhaustions > MAX_EXHAUSTIONS:
        return Decision(used, GiveUp.TOO_MANY)
    return Decision(used)
