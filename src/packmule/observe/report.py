"""``packmule report``: one self-contained HTML page from a run's event log."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    """Add ``report`` to the ``packmule`` subcommands."""
    sub.add_parser("report", help="write an HTML report of a run from its event log")


def main(args: argparse.Namespace) -> int:
    raise NotImplementedError(args.command)
