"""The box rule: Work Queue's proportional fill, without rounding specified values."""

from __future__ import annotations

from packmule import Resources
from packmule.core.allocation import box

W = Resources(cores=4, memory=12000, disk=36000, gpus=0)


def test_nothing_specified_takes_whole_worker() -> None:
    g = Resources(4, 12000, 36000, 2)
    assert box(Resources(), g) == g


def test_one_core_gets_proportional_memory_and_disk() -> None:
    # Work Queue's documented example: 1 core of 4 -> a quarter of the rest.
    assert box(Resources(cores=1), W) == Resources(1, 3000, 9000, 0)


def test_largest_fraction_drives_the_fill_but_specified_values_stay() -> None:
    # 6 GB of 12 is half the worker: unspecified disk gets half; the 1 core stays 1
    # (Work Queue would round the core up to 2).
    assert box(Resources(cores=1, memory=6000), W) == Resources(1, 6000, 18000, 0)


def test_fill_fraction_is_rounded_to_a_whole_fraction() -> None:
    # 5 GB of 12 = 0.42 -> tasks of this shape fit twice -> fill = 1/2
    assert box(Resources(memory=5000), W) == Resources(2, 5000, 18000, 0)


def test_fully_specified_is_exact() -> None:
    assert box(Resources(1, 6000, 27000, 0), W) == Resources(1, 6000, 27000, 0)


def test_too_big_never_fits() -> None:
    assert box(Resources(cores=5), W) is None
    assert box(Resources(gpus=1), W) is None


def test_gpu_task_gets_no_cores_unless_asked() -> None:
    g = Resources(4, 12000, 36000, 4)
    assert box(Resources(gpus=1), g) == Resources(0, 3000, 9000, 1)
    assert box(Resources(gpus=1, cores=2), g) == Resources(2, 6000, 18000, 1)


def test_explicit_zeros_fill_the_rest_with_the_whole_worker() -> None:
    assert box(Resources(gpus=0), W) == Resources(4, 12000, 36000, 0)
    # Parsl's habitual {'cores': 1, 'memory': 0, 'disk': 0}
    assert box(Resources(cores=1, memory=0, disk=0), W) == Resources(1, 0, 0, 0)
