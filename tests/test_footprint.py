"""What workers and runners import, the runner's channel, and results pickled without
cloudpickle where plain pickle can (benchmarks/footprint.py measures the memory)."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import threading

import pytest

import packmule
from packmule.serialize import dumps_exception, dumps_result, loads, loads_exception
from packmule.worker.runner import Channel


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(out.stdout.splitlines()[-1]))


def tops(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules} | {m for m in modules if m.startswith("packmule.")}


# What only the manager, the pack builder or Parsl need.
HEAVY = {"zmq", "cloudpickle", "packaging", "psutil", "multiprocessing", "parsl", "email",
         "packmule.manager", "packmule.core", "packmule.envpack", "packmule.protocol",
         "packmule.task"}


def test_a_runner_imports_only_what_it_needs_to_take_requests() -> None:
    # json: the probe's own; typing and subprocess: loaded when needed (a shell task)
    loaded = tops(loaded_after("import packmule.worker.runner") - loaded_after("import json"))
    assert not loaded & (HEAVY | {"typing", "subprocess"}), sorted(loaded & HEAVY)
    assert {"msgpack", "pickle", "packmule.serialize", "packmule.errors"} <= loaded


def test_a_worker_does_not_load_the_pack_builder() -> None:
    loaded = loaded_after("import packmule.worker.daemon, packmule.worker.packs")
    assert not loaded & {"packaging", "importlib.metadata", "packmule.envpack.build",
                         "packmule.envpack.analysis", "packmule.manager"}, sorted(loaded)


def test_importing_packmule_loads_no_manager_until_a_name_is_used() -> None:
    loaded = tops(loaded_after("import packmule; packmule.TaskError; packmule.__version__"))
    assert not loaded & HEAVY, sorted(loaded & HEAVY)
    assert "packmule.manager" in loaded_after("import packmule; packmule.Manager")


def test_the_simulator_does_without_the_command_line_and_zmq() -> None:
    loaded = tops(loaded_after("import packmule.sim.alloc"))
    assert not loaded & {"zmq", "packmule.cli", "packmule.manager", "packmule.protocol"}


def test_the_lazy_names_are_the_documented_ones() -> None:
    from packmule.manager import Manager, ManagerStats
    from packmule.resources import Resources
    from packmule.task import CommandResult, File, PythonTask, Task

    assert (packmule.Manager, packmule.ManagerStats, packmule.Resources) == (
        Manager, ManagerStats, Resources)
    assert (packmule.Task, packmule.PythonTask, packmule.File, packmule.CommandResult) == (
        Task, PythonTask, File, CommandResult)
    assert set(packmule.__all__) <= set(dir(packmule))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        packmule.Nope  # type: ignore[attr-defined]  # noqa: B018
    namespace: dict[str, object] = {}
    exec("from packmule import Manager, PythonTask, Task, WorkerLost", namespace)
    assert namespace["Task"] is Task


def test_star_import_still_gives_every_documented_name() -> None:
    pytest.importorskip("parsl")  # WorkQueueExecutor is in __all__
    loaded = loaded_after("from packmule import *; WorkQueueExecutor; Manager; Task")
    assert "packmule.parsl" in loaded


# ------------------------------------------------------------------ the channel
def pair() -> tuple[Channel, Channel]:
    a, b = socket.socketpair()
    return Channel(a.detach()), Channel(b.detach())


def test_channel_carries_whole_messages_of_any_size() -> None:
    left, right = pair()
    messages = [b"", b"x", os.urandom(70_000), os.urandom(5 << 20)]
    sender = threading.Thread(target=lambda: [left.send_bytes(m) for m in messages])
    sender.start()  # the big ones need a reader at the other end
    got = [bytes(right.recv_bytes()) for _ in messages]
    sender.join()
    assert got == messages
    assert not right.poll(0)
    left.send_bytes(b"ping")
    assert right.poll(1.0)
    assert right.recv_bytes() == b"ping"
    left.close()
    assert right.poll(0)  # the end is readable too
    with pytest.raises(EOFError):
        right.recv_bytes()
    right.close()
    right.close()  # twice is fine
    with pytest.raises(OSError):
        right.poll(0)
    with pytest.raises(OSError):
        right.send_bytes(b"late")


def test_a_long_message_calls_back_between_its_chunks() -> None:
    """The worker heartbeats while a runner takes a task's large argument: the callback
    runs between chunks of SEND_CHUNK bytes, and the parts arrive joined, in order."""
    from packmule.worker.runner import SEND_CHUNK

    left, right = pair()
    parts = [b"head", os.urandom(3 * SEND_CHUNK + 5), b"", b"tail"]
    calls: list[int] = []
    sender = threading.Thread(
        target=lambda: left.send_bytes(parts, between=lambda: calls.append(1)))
    sender.start()
    got = bytes(right.recv_bytes())
    sender.join()
    assert got == b"".join(parts)
    assert len(calls) >= 3  # at least once per whole chunk written before the end
    left.send_bytes(b"short", between=lambda: calls.append(2))
    assert right.recv_bytes() == b"short" and 2 not in calls  # one write: no call
    left.close()
    right.close()


def test_channel_speaks_the_framing_of_multiprocessing_connection() -> None:
    """Same bytes on the wire: a runner of either kind can talk to a worker of either."""
    from multiprocessing.connection import Connection

    a, b = socket.socketpair()
    ours, theirs = Channel(a.detach()), Connection(b.detach())
    ours.send_bytes(b"hello")
    assert theirs.recv_bytes() == b"hello"
    theirs.send_bytes(b"x" * 100_000)
    assert ours.recv_bytes() == b"x" * 100_000
    ours.close()
    theirs.close()


def test_a_runner_to_a_dead_peer_raises_oserror() -> None:
    left, right = pair()
    right.close()
    with pytest.raises(OSError):
        left.send_bytes(b"anyone?")
    left.close()


# ------------------------------------------------------------------ results
class Importable(Exception):
    pass


def test_results_use_plain_pickle_when_it_can_and_cloudpickle_when_not() -> None:
    value = {"a": [1, 2.5, "x"], "e": Importable("boom")}
    data = dumps_result(value)
    assert b"cloudpickle" not in data
    assert repr(loads(data)) == repr(value)
    double = dumps_result(lambda x: 2 * x)  # plain pickle refuses a lambda
    assert b"cloudpickle" in double
    assert loads(double)(21) == 42


def test_an_exception_of_a_class_that_came_by_value_still_travels() -> None:
    import cloudpickle

    # What a runner holds after unpickling a task defined in the user's __main__.
    namespace: dict[str, object] = {}
    exec("class Odd(ValueError):\n    pass\n", {"__name__": "not_importable"}, namespace)
    odd_class = pickle.loads(cloudpickle.dumps(namespace["Odd"]))
    try:
        raise odd_class("strange")  # type: ignore[operator]
    except Exception as exc:
        data = dumps_exception(exc)
    back = loads_exception(data)
    assert type(back).__name__ == "Odd" and str(back) == "strange"
    assert "strange" in str(back.__cause__)
