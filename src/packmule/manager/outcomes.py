"""What an attempt's result means for the user: the measured resources it
reports, and the packmule error that explains a failure."""

from __future__ import annotations

import math
import pickletools

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


#: A pickled exception longer than this is not looked into for its type and message.
_SUMMARY_LIMIT = 1 << 20


def error_summary(exc: BaseException) -> tuple[str, str]:
    """An error's type name and the first line of its message (for the event log)."""
    text = str(exc)
    return type(exc).__name__, text.splitlines()[0] if text else ""


def exception_summary(data: bytes) -> tuple[str, str]:
    """The type name and the first line of the message of a task's exception, as the
    worker pickled it (``(exception, formatted traceback)``), read from the traceback's
    text without unpickling anything (the loop never unpickles what workers send)."""
    text = None
    if len(data) <= _SUMMARY_LIMIT:
        try:
            for op, arg, _ in pickletools.genops(data):
                if isinstance(arg, str) and op.name.endswith("UNICODE"):
                    text = arg  # the traceback is the last string
        except Exception:  # not a pickle this reads: say what is known
            text = None
    if text is None:
        return "Exception", ""
    # After the last traceback header, the frames are indented; the first line that is
    # not is "Type: first line of the message".
    lines = text.splitlines()
    start = 0
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            start = i + 1
    for line in lines[start:]:
        if line and not line[0].isspace():
            kind, _, message = line.partition(": ")
            return kind.rsplit(".", 1)[-1] or "Exception", message
    return "Exception", ""
