"""The ``fixed`` mode: nothing learned."""

from __future__ import annotations

from collections.abc import Sequence, Set

from .config import Vals
from .strategy import Shared

__all__ = ["FixedStrategy"]


class FixedStrategy:
    """The task's request, unset fields from the category max (else the box rule's share).

    A retry gives an exceeded resource the largest worker's worth, and leaves the others
    to the box rule: only explicit values are hard limits (Work Queue would fail it).
    """

    draws_each = False

    def __init__(self, shared: Shared) -> None:
        self._max: Vals = list(shared.max)

    def first(self, worker: Sequence[int]) -> Vals:
        return list(self._max)

    def retry(self, worker: Sequence[int], measured: Sequence[int], exceeded: Set[int]) -> Vals:
        return [w if r in exceeded else None for r, w in enumerate(worker)]

    def learn(self, measured: Sequence[int], wall: float, exhausted: bool,
              gave_up: bool) -> bool:
        return False

    def stats(self) -> dict[str, object]:
        return {}
