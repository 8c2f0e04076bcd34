"""Validation of Parsl's ``parsl_resource_specification`` for this executor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from parsl.executors.errors import InvalidResourceSpecification

from ..errors import InvalidResources
from ..resources import Resources

#: Keys the spec may hold: the four resources, plus scheduling hints.
ACCEPTED_KEYS = frozenset(
    {"cores", "memory", "disk", "gpus", "priority", "running_time_min", "category"}
)


@dataclass(frozen=True)
class TaskSpec:
    """A validated resource specification."""

    resources: Resources
    priority: float
    category: str | None
    running_time_min: float | None


def parse_spec(spec: dict[str, Any] | None) -> TaskSpec:
    """Check keys and types; raise Parsl's InvalidResourceSpecification naming what is wrong."""
    spec = spec or {}
    if not isinstance(spec, dict):
        raise InvalidResourceSpecification(
            set(), f"parsl_resource_specification must be a dict, got {type(spec).__name__}"
        )
    bad = set(spec) - ACCEPTED_KEYS
    if bad:
        raise InvalidResourceSpecification(
            bad,
            f"unknown key(s) {sorted(bad)} in parsl_resource_specification; "
            f"packmule accepts {sorted(ACCEPTED_KEYS)}",
        )
    try:
        resources = Resources(**{k: spec[k] for k in ("cores", "memory", "disk", "gpus")
                                 if k in spec})
    except InvalidResources as exc:
        keys = {k for k in ("cores", "memory", "disk", "gpus") if f"'{k}'" in str(exc)}
        raise InvalidResourceSpecification(keys, str(exc)) from None
    priority = spec.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, (int, float)):
        raise InvalidResourceSpecification(
            {"priority"}, f"priority must be a number, got {priority!r}"
        )
    category = spec.get("category")
    if category is not None and not isinstance(category, str):
        raise InvalidResourceSpecification(
            {"category"}, f"category must be a string, got {category!r}"
        )
    rtm = spec.get("running_time_min")
    if rtm is not None and (isinstance(rtm, bool) or not isinstance(rtm, (int, float)) or rtm < 0):
        raise InvalidResourceSpecification(
            {"running_time_min"}, f"running_time_min must be a number of seconds >= 0, got {rtm!r}"
        )
    return TaskSpec(resources, float(priority), category, rtm)
