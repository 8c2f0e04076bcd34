from __future__ import annotations

import pickle

import pytest

from packmule import InvalidResources, Resources


def test_fields_and_defaults() -> None:
    r = Resources(cores=2, memory=1000)
    assert (r.cores, r.memory, r.disk, r.gpus) == (2, 1000, None, None)
    assert not r.is_empty and not r.is_complete
    assert Resources().is_empty
    assert Resources(1, 2, 3, 0).is_complete


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"cores": -1}, "must not be negative"),
        ({"memory": "lots"}, "whole number"),
        ({"disk": 1.5}, "whole number"),
        ({"gpus": True}, "whole number"),
    ],
)
def test_bad_values_raise_clear_valueerror(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(InvalidResources, match=needle) as info:
        Resources(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def test_unknown_field_named_in_error() -> None:
    with pytest.raises(InvalidResources, match=r"'cpus'.*fields are cores, memory, disk, gpus"):
        Resources.coerce({"cpus": 2})


@pytest.mark.parametrize(
    ("key", "meant"),
    [("memroy", "memory"), ("Memory", "memory"), ("core", "cores"), ("gpu", "gpus"),
     ("disks", "disk"), ("cpus", "cores"), ("mem", "memory"), ("n_cpus", "cores")],
)
def test_a_typo_in_a_resource_names_the_field_meant(key: str, meant: str) -> None:
    with pytest.raises(InvalidResources) as info:
        Resources.coerce({key: 500})
    assert str(info.value) == (f"unknown resource field(s) {key!r} (did you mean {meant!r}?); "
                               "the fields are cores, memory, disk, gpus")


def test_unknown_fields_without_a_likely_meaning_are_listed_plainly() -> None:
    with pytest.raises(InvalidResources) as info:
        Resources.coerce({"walltime": 60, "memroy": 1, 3: 1})
    assert str(info.value) == ("unknown resource field(s) 3, 'memroy' (did you mean 'memory'?), "
                               "'walltime'; the fields are cores, memory, disk, gpus")


def test_integral_float_accepted() -> None:
    assert Resources(cores=2.0).cores == 2  # type: ignore[arg-type]


def test_arithmetic_and_fit() -> None:
    a, b = Resources(2, 1000, 500, 1), Resources(1, 200, 100, 0)
    assert a - b == Resources(1, 800, 400, 1)
    assert a + b == Resources(3, 1200, 600, 1)
    assert b.fits_in(a) and not a.fits_in(b)
    assert a.exceeding(b) == ["cores", "memory", "disk", "gpus"]
    assert Resources(cores=1).fits_in(Resources(1, 0, 0, 0))
    assert (b - a) == Resources(0, 0, 0, 0)


def test_immutable_hashable_picklable() -> None:
    r = Resources(1, 2, 3, 4)
    with pytest.raises(AttributeError):
        r.cores = 5  # type: ignore[misc]
    assert {r: 1}[Resources(1, 2, 3, 4)] == 1
    assert pickle.loads(pickle.dumps(r)) == r
    assert repr(Resources(cores=1)) == "Resources(cores=1)"
