"""What an attempt's result means for the user: the measured resources it
reports, and the packmule error that explains a failure."""

from __future__ import annotations

import math

from ..errors import FileTransferError, ResourceExhausted, TaskCrashed, TaskError, TaskTimeout
from ..protocol import messages as m
from ..resources import Resources
from .ipc import Submit


def measured_resources(r: m.TaskResult) -> Resources | None:
    """What an attempt used, as whole units (cores rounded by the category's rule later)."""
    if not r.measured:
        return None
    return Resources(
        cores=math.ceil(r.measured.get("cores", 0.0)),
        memory=math.ceil(r.measured.get("memory", 0.0)),
        disk=math.ceil(r.measured.get("disk", 0.0)),
        gpus=len(r.gpu_ids),
    )


def failure(job: Submit, r: m.TaskResult, allocation: Resources | None) -> BaseException:
    """The error for an attempt that failed for good, naming what to do about it."""
    S = m.TaskStatus
    tid = job.id
    if r.status is S.TIMEOUT:
        return TaskTimeout(
            f"task {tid} ran past its {job.timeout:g} s limit and was killed "
            f"(attempt {r.attempt}). Raise timeout= if it needs longer.",
            tid,
        )
    if r.status is S.CRASHED:
        return TaskCrashed(f"task {tid}: {r.message}", tid)
    if r.status is S.EXHAUSTED:
        resource = r.exceeded[0] if r.exceeded else "memory"
        limit = float(getattr(allocation, resource, 0) or 0)
        measured = r.measured.get(resource, 0.0)
        explicit = getattr(job.resources, resource) is not None
        advice = (f"ask for more (resources={{'{resource}': ...}}), or leave {resource} "
                  "out to let packmule size it" if explicit else
                  "it needs more than the largest worker has")
        return ResourceExhausted(
            f"task {tid} needed more {resource} than its "
            f"{'explicit limit' if explicit else 'allocation'} of {limit:.0f} MB and was "
            f"killed (attempt {r.attempt}, {measured:.0f} MB when stopped); {advice}",
            tid, resource, measured, limit,
        )
    if r.status is S.SETUP_ERROR:
        return FileTransferError(f"task {tid}: {r.message}", tid)
    return TaskError(f"task {tid} failed: {r.message}", tid)
