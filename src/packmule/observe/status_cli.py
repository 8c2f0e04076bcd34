"""``packmule status`` and ``packmule runs``: read a run's status file and run directories."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    """Add ``status`` and ``runs`` to the ``packmule`` subcommands."""
    sub.add_parser("status", help="what a run is doing now: categories, workers, tasks")
    sub.add_parser("runs", help="list run directories")


def main(args: argparse.Namespace) -> int:
    raise NotImplementedError(args.command)
