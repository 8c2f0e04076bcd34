"""The Resources value type: cores, memory (MB), disk (MB) and gpus.

A Resources value is either a *request* (any field may be ``None``: not
specified, to be filled in by the allocation rule) or a *concrete amount*
(every field set), such as a worker's size or a task's allocation.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from .errors import InvalidResources

FIELDS = ("cores", "memory", "disk", "gpus")
UNITS = {"cores": "cores", "memory": "MB", "disk": "MB", "gpus": "gpus"}
#: What other systems call them (Slurm, Kubernetes, ...), for "did you mean".
_SYNONYMS = {"cpu": "cores", "cpus": "cores", "ncpus": "cores", "core": "cores",
             "mem": "memory", "ram": "memory", "gpu": "gpus", "ngpus": "gpus"}


def _unknown(key: object) -> str:
    """An unknown field, with the field it most likely means."""
    text = str(key)
    guess = _SYNONYMS.get(text.lower().replace("_", "").replace("-", ""))
    if guess is None:
        close = difflib.get_close_matches(text.lower(), FIELDS, n=1, cutoff=0.6)
        guess = close[0] if close else None
    return f"{key!r} (did you mean {guess!r}?)" if guess else repr(key)


def _check(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidResources(
            f"resource {name!r} must be a whole number, got {value!r} "
            f"({type(value).__name__}); give {name} in {UNITS[name]}, e.g. {name}=1"
        )
    if isinstance(value, float):
        if not value.is_integer():
            raise InvalidResources(
                f"resource {name!r} must be a whole number of {UNITS[name]}, got {value!r}"
            )
        value = int(value)
    if value < 0:
        raise InvalidResources(
            f"resource {name!r} must not be negative, got {value}; "
            f"leave it out to let packmule choose"
        )
    return int(value)


class Resources:
    """Cores, memory in MB, disk in MB and GPUs; ``None`` means "not specified".

    Immutable and hashable. The constructor validates; arithmetic (``+``,
    ``-``) treats unspecified fields as zero and returns complete values.
    """

    __slots__ = ("_hash", "cores", "disk", "gpus", "memory")
    cores: int | None
    memory: int | None
    disk: int | None
    gpus: int | None

    def __init__(
        self,
        cores: int | None = None,
        memory: int | None = None,
        disk: int | None = None,
        gpus: int | None = None,
    ) -> None:
        _set = object.__setattr__
        _set(self, "cores", _check("cores", cores))
        _set(self, "memory", _check("memory", memory))
        _set(self, "disk", _check("disk", disk))
        _set(self, "gpus", _check("gpus", gpus))

    @classmethod
    def _raw(cls, cores: int, memory: int, disk: int, gpus: int) -> Resources:
        """Build from values known to be valid (the hot path of the scheduler)."""
        r = object.__new__(cls)
        _set = object.__setattr__
        _set(r, "cores", cores)
        _set(r, "memory", memory)
        _set(r, "disk", disk)
        _set(r, "gpus", gpus)
        return r

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Resources is immutable; build a new one")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Resources):
            return NotImplemented
        return self.astuple() == other.astuple()

    def __hash__(self) -> int:
        try:
            return self._hash  # type: ignore[attr-defined,no-any-return]
        except AttributeError:  # computed once, on first use (values are often dict keys)
            h = hash(self.astuple())
            object.__setattr__(self, "_hash", h)
            return h

    def __reduce__(self) -> tuple[object, ...]:
        return (Resources, self.astuple())

    def __repr__(self) -> str:
        parts = [f"{n}={getattr(self, n)}" for n in FIELDS if getattr(self, n) is not None]
        return "Resources(" + ", ".join(parts) + ")"

    __str__ = __repr__

    @classmethod
    def coerce(cls, value: Resources | Mapping[str, Any] | None) -> Resources:
        """Accept a Resources, a mapping of the four fields, or None (nothing specified)."""
        if value is None:
            return cls()
        if isinstance(value, Resources):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - set(FIELDS), key=str)
            if unknown:
                raise InvalidResources(
                    f"unknown resource field(s) {', '.join(map(_unknown, unknown))}; "
                    f"the fields are {', '.join(FIELDS)}"
                )
            return cls(**value)
        raise InvalidResources(
            f"resources must be a packmule.Resources or a dict, got {type(value).__name__}"
        )

    # ---- views -----------------------------------------------------------
    def astuple(self) -> tuple[int | None, int | None, int | None, int | None]:
        return (self.cores, self.memory, self.disk, self.gpus)

    def as_dict(self) -> dict[str, int | None]:
        return dict(zip(FIELDS, self.astuple(), strict=True))

    @property
    def is_empty(self) -> bool:
        """True when nothing is specified (the task takes a whole worker)."""
        return self.astuple() == (None, None, None, None)

    @property
    def is_complete(self) -> bool:
        return None not in self.astuple()

    def filled(self) -> Resources:
        """Unspecified fields as zero: for arithmetic on concrete amounts."""
        return Resources._raw(self.cores or 0, self.memory or 0, self.disk or 0, self.gpus or 0)

    # ---- arithmetic on concrete amounts ------------------------------------
    def __add__(self, other: Resources) -> Resources:
        return Resources._raw(
            (self.cores or 0) + (other.cores or 0),
            (self.memory or 0) + (other.memory or 0),
            (self.disk or 0) + (other.disk or 0),
            (self.gpus or 0) + (other.gpus or 0),
        )

    def __sub__(self, other: Resources) -> Resources:
        """Difference, floored at zero."""
        return Resources._raw(
            max(0, (self.cores or 0) - (other.cores or 0)),
            max(0, (self.memory or 0) - (other.memory or 0)),
            max(0, (self.disk or 0) - (other.disk or 0)),
            max(0, (self.gpus or 0) - (other.gpus or 0)),
        )

    def fits_in(self, other: Resources) -> bool:
        """Every field of self (unspecified = 0) is at most other's (unspecified = 0)."""
        return (
            (self.cores or 0) <= (other.cores or 0)
            and (self.memory or 0) <= (other.memory or 0)
            and (self.disk or 0) <= (other.disk or 0)
            and (self.gpus or 0) <= (other.gpus or 0)
        )

    def exceeding(self, other: Resources) -> list[str]:
        """Names of the fields where self exceeds other."""
        return [n for n, a, b in zip(FIELDS, self.astuple(), other.astuple(), strict=True)
                if (a or 0) > (b or 0)]


ZERO = Resources._raw(0, 0, 0, 0)


def maximum(a: Resources, b: Resources) -> Resources:
    """Element-wise maximum of two concrete amounts."""
    pairs = zip(a.astuple(), b.astuple(), strict=True)
    return Resources._raw(*(max(x or 0, y or 0) for x, y in pairs))
