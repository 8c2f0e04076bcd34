"""A network namespace joined to this one by a veth pair, to cut a worker off the network.

Used by the partition test (``tests/chaos/test_partition.py``) and the
reliability benchmark (``benchmarks/reliability.py``); root only.

Network safety (docs DESIGN, "Network rules for tests"): a blackhole route for
the private /24 goes into the root namespace before any address is given, so a
packet for it never leaves the machine; everything is removed at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if check and res.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res


class Veth:
    """Namespace ``ns`` (``eth0`` = ``net.1``) paired with ``root_if`` (``net.254``) here.

    ``name`` says who made it (``pmchaos``), ``subnet`` is its /16 (``10.214``):
    each user has its own, and the process id tells apart two runs at once.
    """

    def __init__(self, name: str, subnet: str) -> None:
        tag = os.getpid()
        self.net = f"{subnet}.{tag % 250 + 1}"
        self.ns = f"{name}-{tag}"
        self.root_if = f"{name[:3]}{tag}r"[:15]
        self.host = f"{self.net}.254"
        self.blackhole = ["blackhole", f"{self.net}.0/24", "metric", "4242"]
        self.is_cut = False

    def up(self) -> None:
        _ip("route", "add", *self.blackhole)  # first: nothing for the /24 leaves the machine
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.root_if, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        _ip("addr", "add", f"{self.host}/24", "dev", self.root_if)
        _ip("link", "set", self.root_if, "up")
        self._inside("link", "set", "lo", "up")
        self._inside("addr", "add", f"{self.net}.1/24", "dev", "eth0")
        self._inside("link", "set", "eth0", "up")

    def _inside(self, *args: str) -> None:
        _ip("-n", self.ns, *args)

    def cut(self) -> None:
        """Take the namespace's end down: its route to this namespace goes with it."""
        self._inside("link", "set", "eth0", "down")
        self.is_cut = True

    def heal(self) -> None:
        self._inside("link", "set", "eth0", "up")
        self.is_cut = False

    def down(self) -> None:
        _ip("netns", "del", self.ns, check=False)  # takes the pair with it
        _ip("link", "del", self.root_if, check=False)
        while _ip("route", "del", *self.blackhole, check=False).returncode == 0:
            pass

    @property
    def prefix(self) -> list[str]:
        """Run a command in the namespace (nsenter keeps /sys and its cgroup mounts)."""
        return ["nsenter", f"--net=/run/netns/{self.ns}"]


@contextmanager
def veth_pair(name: str, subnet: str) -> Iterator[tuple[Veth | None, str]]:
    """A :class:`Veth`, up, taken down at the end; or None with why it cannot be made."""
    if os.geteuid() != 0:
        yield None, "needs root (a network namespace and a veth pair)"
        return
    for tool, package in (("ip", "iproute2"), ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            yield None, f"needs {tool} ({package}) to make a network namespace"
            return
    pair = Veth(name, subnet)
    try:
        pair.up()
    except OSError as exc:
        pair.down()
        yield None, f"cannot make a network namespace and veth pair here: {exc}"
        return
    try:
        yield pair, "available"
    finally:
        pair.down()
