"""Seeing what a run does: run directories, the event log, the status file, and the
commands and views built on them (``packmule status``, ``runs``, ``report``, progress)."""
