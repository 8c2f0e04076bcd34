"""The ``packmule`` command line: ``worker``, ``status``, ``runs``, ``report``, ``pack``,
``sim``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from ._version import __version__
from .errors import AuthenticationError, InvalidResources
from .resources import Resources

# protocol.security (zmq) is imported where it is used: ``packmule sim`` does without.


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, e.g. 127.0.0.1:9123, got {text!r}")
    return host.strip("[]"), int(port)


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if v < minimum:
            what = "must not be negative" if minimum == 0 else f"must be at least {minimum}"
            raise argparse.ArgumentTypeError(f"{what}, got {v}")
        return v

    return parse


_positive_int = whole_number(0)


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {v}")
    return v


def build_parser(pack: bool = True) -> argparse.ArgumentParser:
    """The ``packmule`` parser; ``pack=False`` leaves ``pack`` out (it imports the pack
    builder, which a worker does not need)."""
    from .protocol.security import PASSWORD_ENV

    p = argparse.ArgumentParser(
        prog="packmule",
        description="packmule: run heterogeneous Python and shell tasks on clusters.",
    )
    p.add_argument("--version", action="version", version=f"packmule {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    w = sub.add_parser(
        "worker",
        help="run a worker daemon that executes tasks for a manager",
        description=(
            "Connect to a packmule manager and run as many of its tasks at once as this "
            "node's cores, memory, disk and GPUs allow. Resources are detected (cgroup and "
            "CPU-affinity aware; GPUs from CUDA_VISIBLE_DEVICES or nvidia-smi) unless given. "
            f"The shared secret comes from --password-file or ${PASSWORD_ENV}, never the "
            "command line. Exit codes: 0 done, 1 manager unreachable, 2 bad command line, "
            "3 wrong password, 4 refused by the manager."
        ),
    )
    w.add_argument("address", type=_address, metavar="HOST:PORT", help="the manager's address")
    w.add_argument("--cores", type=_positive_int, help="cores to offer (default: detected)")
    w.add_argument("--memory", type=_positive_int, metavar="MB",
                   help="memory to offer in MB (default: detected)")
    w.add_argument("--disk", type=_positive_int, metavar="MB",
                   help="disk to offer in MB (default: free space of --workdir)")
    w.add_argument("--gpus", type=_positive_int,
                   help="GPUs to offer (default: detected; more than detected are taken as given)")
    w.add_argument("--password-file", metavar="FILE",
                   help=f"file holding the manager's secret (default: ${PASSWORD_ENV})")
    w.add_argument("--workdir", metavar="DIR", default=None,
                   help="parent directory of task sandboxes and the file cache (default: $TMPDIR)")
    w.add_argument("--idle-timeout", type=_seconds, metavar="S", default=900.0,
                   help="exit after this many seconds without a task (default: 900)")
    w.add_argument("--connect-timeout", type=_seconds, metavar="S", default=900.0,
                   help="give up after this many seconds without reaching a manager (default: 900)")
    w.add_argument("--enforce", choices=("auto", "cgroup", "poll"), default="auto",
                   help="how task memory limits are enforced: a cgroup v1 memory limit per "
                        "runner (exact, immediate), or polling the task's process tree; "
                        "auto: cgroups where writable (default: auto)")
    w.add_argument("--pack-cache", metavar="DIR", default=None,
                   help="where environment packs are unpacked and kept across worker runs "
                        "(default: $XDG_CACHE_HOME/packmule/worker-packs)")
    w.add_argument("--single-shot", action="store_true",
                   help="exit when the first manager session ends instead of reconnecting")
    w.add_argument("--debug", action="store_true", help="log every step")
    if pack:
        from .observe import report, status_cli

        status_cli.add_parser(sub)
        report.add_parser(sub)
        from .envpack.cli import add_parser as add_pack_parser

        add_pack_parser(sub)
    sim = sub.add_parser(
        "sim",
        help="simulate allocation strategies on task traces (no cluster needed)",
        description="Replay published task traces through packmule's allocation code.",
    )
    sim_sub = sim.add_subparsers(dest="sim_command", required=True)
    sim_sub.add_parser(
        "alloc", add_help=False,
        help="one strategy on one trace, or every strategy on a folder of traces (--table)",
    )
    sim_sub.add_parser(
        "shifts", add_help=False,
        help="write shift traces (published traces reordered by tag or joined) into a folder",
    )
    return p


def worker_main(args: argparse.Namespace) -> int:
    from .protocol.security import PASSWORD_ENV, load_secret
    from .worker import detect
    from .worker.daemon import Worker

    try:
        secret = load_secret(args.password_file)
    except AuthenticationError as exc:
        print(f"packmule worker: {exc}", file=sys.stderr)
        return 3
    os.environ.pop(PASSWORD_ENV, None)  # tasks inherit the environment: keep the secret out
    if secret is None:
        print(
            f"packmule worker: no secret given. Pass --password-file FILE (the manager's "
            f"password file) or set ${PASSWORD_ENV}.",
            file=sys.stderr,
        )
        return 3
    workdir = Path(args.workdir or tempfile.gettempdir())
    gpu_ids = detect.choose_gpus(args.gpus, detect.detect_gpus())
    try:
        size = Resources(
            cores=args.cores if args.cores is not None else detect.detect_cores(),
            memory=args.memory if args.memory is not None else detect.detect_memory(),
            disk=args.disk if args.disk is not None else detect.detect_disk(workdir),
            gpus=len(gpu_ids),
        )
    except InvalidResources as exc:
        print(f"packmule worker: {exc}", file=sys.stderr)
        return 2  # a bad command line
    host, port = args.address
    logging.getLogger("packmule").info("worker offering %s to %s:%d", size, host, port)
    try:
        worker = Worker(
            host, port, secret=secret, resources=size, gpu_ids=gpu_ids, workdir=workdir,
            idle_timeout=args.idle_timeout, connect_timeout=args.connect_timeout,
            single_shot=args.single_shot, enforce=args.enforce,
            pack_cache=Path(args.pack_cache) if args.pack_cache else None,
        )
    except (ValueError, RuntimeError) as exc:
        print(f"packmule worker: {exc}", file=sys.stderr)
        return 2
    return worker.run()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        build_parser().print_help()
        return 0
    if argv[:2] == ["sim", "alloc"]:
        from .sim.alloc import main as sim_alloc

        return sim_alloc(argv[2:])
    if argv[:2] == ["sim", "shifts"]:
        from .sim.shifts import main as sim_shifts

        return sim_shifts(argv[2:])
    args = build_parser(pack=argv[:1] != ["worker"]).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "debug", False) else logging.INFO,
        format=f"%(asctime)s packmule[{os.getpid()}] %(levelname)s %(message)s",
    )
    if args.command == "worker":
        return worker_main(args)
    if args.command in ("status", "runs"):
        from .observe.status_cli import main as status_main

        return status_main(args)
    if args.command == "report":
        from .observe.report import main as report_main

        return report_main(args)
    if args.command == "pack":
        from .envpack.cli import main as pack_main

        return pack_main(args)
    raise AssertionError(args.command)
