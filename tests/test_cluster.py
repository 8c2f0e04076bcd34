"""Integration: a real manager and real ``packmule worker`` subprocesses on loopback."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

import packmule
from packmule import File, PythonTask, Resources, Task
from packmule.local import start_worker, stop_worker
from packmule.protocol import messages as m
from packmule.protocol.security import derive_keys

from .conftest import ClusterFactory, connected, wait_until


def span(seconds: float) -> tuple[float, float, int]:
    """A task body: sleep, report (start, end, pid) in wall-clock time."""
    start = time.time()
    time.sleep(seconds)
    return start, time.time(), os.getpid()


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def test_one_core_tasks_run_four_at_a_time_on_two_by_two(cluster: ClusterFactory) -> None:
    with cluster(2, cores=2) as mgr:
        wait_until(connected(mgr, 2))
        tasks = [PythonTask(span, 0.4, resources={"cores": 1}) for _ in range(8)]
        futs = [mgr.submit(t) for t in tasks]
        spans = [f.result(timeout=30) for f in futs]
        assert max_overlap([(s, e) for s, e, _ in spans]) == 4
        assert all(t.allocation == Resources(1, 1000, 1000, 0) for t in tasks)


def test_short_tasks_are_prefetched_without_overcommitting(cluster: ClusterFactory) -> None:
    with cluster(1, cores=2) as mgr:
        wait_until(connected(mgr, 1))
        for _ in range(6):  # the category learns that its tasks are short
            mgr.submit(PythonTask(span, 0.001, resources={"cores": 1})).result(timeout=30)
        tasks = [PythonTask(span, 0.02, resources={"cores": 1 + i % 3 // 2}) for i in range(30)]
        futs = [mgr.submit(t) for t in tasks]
        victim = mgr.submit(PythonTask(span, 0.02, resources={"cores": 1}))
        victim.cancel()  # possibly while prefetched: the worker must drop it
        spans = [f.result(timeout=30) for f in futs]
        assert mgr.stats().tasks_prefetched > 0
        # never more cores busy than the worker has, prefetched or not
        cores = [t.resources.cores or 0 for t in tasks]
        events = sorted([(s, c) for (s, _, _), c in zip(spans, cores, strict=True)]
                        + [(e, -c) for (_, e, _), c in zip(spans, cores, strict=True)])
        busy = peak = 0
        for _, d in events:
            busy += d
            peak = max(peak, busy)
        assert peak <= 2
        wait_until(lambda: mgr.stats().tasks["running"] == 0)


def test_two_core_task_waits_for_a_whole_worker(cluster: ClusterFactory) -> None:
    with cluster(1, cores=2) as mgr:
        wait_until(connected(mgr, 1))
        small = mgr.submit(PythonTask(span, 0.6, resources={"cores": 1}))
        wait_until(lambda: mgr.stats().tasks["running"] == 1)
        big_task = PythonTask(span, 0.1, resources={"cores": 2})
        big = mgr.submit(big_task)
        s_end = small.result(timeout=30)[1]
        b_start = big.result(timeout=30)[0]
        assert b_start >= s_end
        assert big_task.allocation == Resources(2, 2000, 2000, 0)


def test_no_request_takes_whole_worker_and_sees_its_cores(cluster: ClusterFactory) -> None:
    with cluster(1, cores=2) as mgr:
        futs = [mgr.submit(PythonTask(span, 0.2)) for _ in range(3)]
        spans = [f.result(timeout=30) for f in futs]
        assert max_overlap([(s, e) for s, e, _ in spans]) == 1
        env = mgr.submit(PythonTask(lambda: (os.environ["CORES"], os.environ["OMP_NUM_THREADS"])))
        assert env.result(timeout=30) == ("2", "2")


class Boom(Exception):
    pass


def deep_failure(x: int) -> None:
    def inner() -> None:
        raise Boom(f"bad input {x}")

    inner()


def test_user_exception_keeps_type_and_remote_traceback(cluster: ClusterFactory) -> None:
    with cluster(1) as mgr:
        fut = mgr.submit(PythonTask(deep_failure, 7))
        with pytest.raises(Boom, match="bad input 7") as info:
            fut.result(timeout=30)
        cause = info.value.__cause__
        assert isinstance(cause, packmule.RemoteTraceback)
        assert "inner" in str(cause) and "deep_failure" in str(cause)
        # the manager goes on
        assert mgr.submit(PythonTask(pow, 2, 10)).result(timeout=30) == 1024


def test_python_stdout_and_env_and_kwargs(cluster: ClusterFactory) -> None:
    def talk(greeting: str, *, name: str) -> str:
        print(f"{greeting}, {name}")
        return os.environ["MY_SETTING"]

    with cluster(1) as mgr:
        task = PythonTask(talk, "hello", name="mule", env={"MY_SETTING": "on"})
        assert mgr.submit(task).result(timeout=30) == "on"
        assert task.stdout == "hello, mule\n"


def test_shell_task_result(cluster: ClusterFactory) -> None:
    with cluster(1) as mgr:
        res = mgr.submit(Task("echo out; echo err >&2; echo $CORES; exit 3",
                              resources={"cores": 1})).result(timeout=30)
        assert res == packmule.CommandResult(3, "out\n1\n", "err\n")
        assert not res.ok


def test_files_in_and_out_and_cache(cluster: ClusterFactory, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("abc")
    ref = tmp_path / "ref.dat"
    ref.write_bytes(b"reference" * 1000)

    def shout(i: int) -> int:
        data = Path("in.txt").read_text() + Path("ref.dat").read_text()[:9]
        Path("out.txt").write_text(data.upper() + str(i))
        return len(os.listdir("."))

    with cluster(1) as mgr:
        futs = []
        for i in range(3):
            futs.append(mgr.submit(PythonTask(
                shout, i,
                input_files=[File(str(src)), File(str(ref), cache=True)],
                output_files=[File(str(tmp_path / f"out{i}.txt"), "out.txt")],
                resources={"cores": 1},
            )))
        assert [f.result(timeout=30) for f in futs] == [3, 3, 3]
        for i in range(3):
            assert (tmp_path / f"out{i}.txt").read_text() == f"ABCREFERENCE{i}"
        # three inline inputs plus the cached one sent once
        assert mgr.stats().files_sent == 4

        missing = mgr.submit(PythonTask(len, "x", output_files=[str(tmp_path / "nope")]))
        with pytest.raises(packmule.FileTransferError, match="did not produce output file"):
            missing.result(timeout=30)
        absent = mgr.submit(PythonTask(len, "x", input_files=[str(tmp_path / "absent")]))
        with pytest.raises(packmule.FileTransferError, match="does not exist"):
            absent.result(timeout=5)


def test_wrong_password_worker_exits_clearly_and_manager_logs_once(
    cluster: ClusterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="packmule.manager")
    with cluster(0) as mgr:
        procs = [
            start_worker(mgr, cores=1, memory=100, disk=100, stderr=subprocess.PIPE,
                         env={"PACKMULE_PASSWORD": "not-the-password"})
            for _ in range(2)
        ]
        for p in procs:
            _, err = p.communicate(timeout=30)
            assert p.returncode == 3
            assert b"password differs from the manager's" in err
        wait_until(lambda: any("wrong password" in r.getMessage() for r in caplog.records))
        assert sum("wrong password" in r.getMessage() for r in caplog.records) == 1
        assert mgr.stats().workers == 0
        # and a correct worker still gets in
        good = start_worker(mgr, cores=1, memory=100, disk=100)
        try:
            assert mgr.submit(PythonTask(abs, -3)).result(timeout=30) == 3
        finally:
            stop_worker(good)


def test_worker_killed_mid_task_tasks_finish_elsewhere(cluster: ClusterFactory) -> None:
    with cluster(2, cores=2) as mgr:
        wait_until(connected(mgr, 2))
        tasks = [PythonTask(span, 1.0, resources={"cores": 1}) for _ in range(4)]
        futs = [mgr.submit(t) for t in tasks]
        wait_until(lambda: mgr.stats().tasks["running"] == 4)
        victim = mgr.worker_processes[0]  # type: ignore[attr-defined]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        spans = [f.result(timeout=60) for f in futs]
        st = mgr.stats()
        assert st.workers_lost == 1 and st.workers == 1
        assert st.tasks_succeeded == 4 and st.tasks_failed == 0
        assert sorted(t.attempts for t in tasks) == [1, 1, 2, 2]
        assert len({pid for *_, pid in spans}) <= 4


def test_silent_worker_loses_lease_and_late_result_is_discarded(
    cluster: ClusterFactory, tmp_path: Path
) -> None:
    log = tmp_path / "attempts"

    def once(path: str) -> str:
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        return "done"

    with cluster(1, cores=1) as mgr:
        wait_until(connected(mgr, 1))
        task = PythonTask(once, str(log))
        fut = mgr.submit(task)
        wait_until(lambda: log.exists())
        frozen = mgr.worker_processes[0]  # type: ignore[attr-defined]
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: mgr.stats().workers_lost == 1, timeout=20)
            helper = start_worker(mgr, cores=1, memory=2000, disk=2000)
            try:
                assert fut.result(timeout=30) == "done"
            finally:
                os.kill(frozen.pid, signal.SIGCONT)
            wait_until(lambda: mgr.stats().workers >= 2, timeout=30)  # it came back
            assert len(log.read_text().split()) == 2
            st = mgr.stats()
            assert st.tasks_succeeded == 1 and task.attempts == 2
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
            stop_worker(helper)


def test_gpu_assignment_with_fake_gpus(cluster: ClusterFactory) -> None:
    def visible() -> tuple[str, float, float]:
        start = time.time()
        time.sleep(1.5)  # long enough to overlap even when runners start slowly
        return os.environ["CUDA_VISIBLE_DEVICES"], start, time.time()

    with cluster(1, cores=2, gpus=2) as mgr:
        wait_until(connected(mgr, 1))
        assert mgr.stats().total.gpus == 2
        one = [mgr.submit(PythonTask(visible, resources={"gpus": 1, "cores": 1}))
               for _ in range(2)]
        got = [f.result(timeout=30) for f in one]
        assert sorted(g for g, *_ in got) == ["0", "1"]
        assert max_overlap([(s, e) for _, s, e in got]) == 2
        both = PythonTask(visible, resources={"gpus": 2})
        assert mgr.submit(both).result(timeout=30)[0] == "0,1"
        assert both.gpu_ids == ["0", "1"]


def test_unpicklable_call_fails_at_submit_and_manager_goes_on(cluster: ClusterFactory) -> None:
    with cluster(1) as mgr:
        fut = mgr.submit(PythonTask(len, threading.Lock()))
        assert fut.done()
        with pytest.raises(packmule.SerializationError, match="argument 0 \\(lock\\)"):
            fut.result()
        assert mgr.submit(PythonTask(len, "abc")).result(timeout=30) == 3


def test_bad_resources_raise_at_construction() -> None:
    with pytest.raises(packmule.InvalidResources, match="'cpu'"):
        PythonTask(len, "x", resources={"cpu": 1})
    with pytest.raises(ValueError, match="must not be negative"):
        Task("true", resources={"memory": -5})


def test_task_bigger_than_every_worker_waits_with_one_warning(
    cluster: ClusterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="packmule.manager")
    with cluster(1, cores=2) as mgr:
        wait_until(connected(mgr, 1))
        huge = mgr.submit(PythonTask(len, "x", resources={"cores": 16}))
        small = mgr.submit(PythonTask(len, "xy", resources={"cores": 1}))
        assert small.result(timeout=30) == 2
        msgs = wait_until(lambda: [r.getMessage() for r in caplog.records
                                   if "largest connected worker" in r.getMessage()])
        assert len(msgs) == 1
        assert "Resources(cores=16)" in msgs[0] and "cores=2" in msgs[0]
        assert not huge.done()
        assert mgr.stats().tasks["waiting"] == 1


def test_cancel_running_task_frees_the_worker(cluster: ClusterFactory) -> None:
    with cluster(1, cores=1) as mgr:
        slow = mgr.submit(PythonTask(time.sleep, 30))
        wait_until(lambda: mgr.stats().tasks["running"] == 1)
        assert slow.cancel()
        with pytest.raises(CancelledError):
            slow.result()
        assert mgr.submit(PythonTask(len, "ok")).result(timeout=10) == 2


def test_timeout_kills_the_task(cluster: ClusterFactory) -> None:
    with cluster(1, cores=1) as mgr:
        fut = mgr.submit(Task("sleep 30", timeout=0.5))
        with pytest.raises(packmule.TaskTimeout, match=r"0\.5 s limit"):
            fut.result(timeout=20)
        assert mgr.submit(Task("echo after")).result(timeout=20).stdout == "after\n"


def test_task_that_kills_its_process_is_reported_and_worker_survives(
    cluster: ClusterFactory,
) -> None:
    with cluster(1, cores=1) as mgr:
        fut = mgr.submit(PythonTask(os.kill, 0, signal.SIGKILL))  # 0: its own process group
        with pytest.raises(packmule.TaskCrashed, match="SIGKILL"):
            fut.result(timeout=30)
        assert mgr.submit(PythonTask(len, "abc")).result(timeout=30) == 3
        assert mgr.stats().workers == 1


def test_retries_for_the_tasks_own_failures(cluster: ClusterFactory, tmp_path: Path) -> None:
    marker = tmp_path / "tries"

    def flaky(path: str) -> int:
        with open(path, "a") as f:
            f.write("x")
        n = len(Path(path).read_text())
        if n < 3:
            raise RuntimeError(f"try {n}")
        return n

    with cluster(1) as mgr:
        assert mgr.submit(PythonTask(flaky, str(marker), max_retries=2)).result(timeout=30) == 3


def test_wait_and_as_completed(cluster: ClusterFactory) -> None:
    with cluster(1) as mgr:
        tasks = [PythonTask(pow, 2, i, resources={"cores": 1}) for i in range(5)]
        for t in tasks:
            mgr.submit(t)
        seen = [t.id for t in mgr.as_completed(timeout=30)]
        assert sorted(seen) == sorted(t.id for t in tasks)
        assert mgr.wait(timeout=10)
        slow = PythonTask(time.sleep, 30)
        mgr.submit(slow)
        assert not mgr.wait(timeout=0.2)
        with pytest.raises(TimeoutError):
            list(mgr.as_completed([slow], timeout=0.2))
        mgr.cancel(slow)
        assert mgr.wait(timeout=10)


def test_version_mismatch_is_refused_with_clear_reason(cluster: ClusterFactory) -> None:
    with cluster(1) as mgr:
        keys = derive_keys(mgr._secret)
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.curve_serverkey = keys.server_public
        sock.curve_publickey = keys.client_public
        sock.curve_secretkey = keys.client_secret
        sock.connect(f"tcp://{mgr.address}")
        try:
            sock.send(m.encode(m.Hello(999, "9.9.9", "w", "elsewhere", 1,
                                       {"cores": 1, "memory": 1, "disk": 1, "gpus": 0}, [])))
            assert sock.poll(10_000)
            reply = m.decode(sock.recv())
            assert isinstance(reply, m.Reject)
            assert "protocol version mismatch" in reply.reason and "9.9.9" in reply.reason
            # a Hello of another shape (protocol 1 had no packs): named just as clearly
            sock.send(msgpack.packb([m.Hello.TAG, 1, "0.0.1", "w", "old", 1,
                                     {"cores": 1, "memory": 1, "disk": 1, "gpus": 0}]))
            assert sock.poll(10_000)
            reply = m.decode(sock.recv())
            assert isinstance(reply, m.Reject) and "speaks 1" in reply.reason, reply
            # an authenticated peer sending garbage is dropped too
            sock.send(b"\xc1garbage")
        finally:
            sock.close(0)
            ctx.term()
        assert mgr.submit(PythonTask(len, "ab")).result(timeout=30) == 2
        assert mgr.stats().workers == 1


def test_raw_garbage_connection_is_dropped_and_manager_keeps_serving(
    cluster: ClusterFactory,
) -> None:
    with cluster(1) as mgr:
        host, port = mgr.address.split(":")
        for payload in (b"GET / HTTP/1.0\r\n\r\n", os.urandom(512), b""):
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(payload)
        assert mgr.submit(PythonTask(len, "abc")).result(timeout=30) == 3


def test_worker_exits_when_manager_shuts_down(cluster: ClusterFactory) -> None:
    with cluster(1) as mgr:
        wait_until(connected(mgr, 1))
        proc = mgr.worker_processes[0]  # type: ignore[attr-defined]
        pending = mgr.submit(PythonTask(time.sleep, 30))
        wait_until(lambda: mgr.stats().tasks["running"] == 1)
        mgr.shutdown()
        assert proc.wait(timeout=20) == 0
        with pytest.raises(packmule.TaskCancelled, match="before the manager shut down"):
            pending.result(timeout=1)


def test_port_in_use_is_a_clear_error() -> None:
    with packmule.Manager() as first, pytest.raises(
        OSError, match=f"cannot listen on .*:{first.port}"
    ):
        packmule.Manager(port=first.port)


def test_worker_reconnects_to_a_restarted_manager(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("shared secret\n")
    first = packmule.Manager(password_file=pw, shutdown_workers=False, run_dir=tmp_path / "a")
    port = first.port
    worker = start_worker(first, cores=1, memory=100, disk=100,
                          extra_args=["--workdir", str(tmp_path)])
    try:
        assert first.submit(PythonTask(len, "ab")).result(timeout=30) == 2
        first.shutdown()
        with packmule.Manager(port=port, password_file=pw, run_dir=tmp_path / "b") as second:
            # the worker notices the closed connection and comes back after its backoff
            assert second.submit(PythonTask(len, "abc")).result(timeout=30) == 3
            assert second.stats().workers_joined == 1
        assert worker.wait(timeout=20) == 0
    finally:
        stop_worker(worker)


def test_single_shot_worker_exits_when_its_manager_goes(tmp_path: Path) -> None:
    mgr = packmule.Manager(shutdown_workers=False, run_dir=tmp_path)
    worker = start_worker(mgr, cores=1, memory=100, disk=100,
                          extra_args=["--single-shot", "--workdir", str(tmp_path)])
    try:
        assert mgr.submit(PythonTask(len, "ab")).result(timeout=30) == 2
        mgr.shutdown()
        assert worker.wait(timeout=20) == 0
    finally:
        stop_worker(worker)


def test_tasks_cannot_read_the_secret(cluster: ClusterFactory) -> None:
    with cluster(1) as mgr:
        got = mgr.submit(PythonTask(os.environ.get, "PACKMULE_PASSWORD")).result(timeout=30)
        assert got is None
        shell = mgr.submit(Task("echo ${PACKMULE_PASSWORD:-unset}")).result(timeout=30)
        assert shell.stdout == "unset\n"


def test_function_the_worker_cannot_import_is_explained(
    cluster: ClusterFactory, tmp_path: Path
) -> None:
    import importlib
    import sys

    (tmp_path / "only_here.py").write_text("def f():\n    return 1\n")
    sys.path.insert(0, str(tmp_path))
    try:  # imported here, but not on the path the workers will get
        mod = importlib.import_module("only_here")
    finally:
        sys.path.remove(str(tmp_path))
    with cluster(1) as mgr, pytest.raises(packmule.SerializationError,
                                          match="importable where the worker runs"):
        mgr.submit(PythonTask(mod.f)).result(timeout=30)
    del sys.modules["only_here"]


class Unrebuildable(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


def raise_unrebuildable() -> None:
    raise Unrebuildable(1, 2)


def test_exceptions_that_cannot_travel_become_remote_exceptions(cluster: ClusterFactory) -> None:
    import sys

    with cluster(1) as mgr:
        with pytest.raises(packmule.RemoteException, match="Unrebuildable: 1/2") as info:
            mgr.submit(PythonTask(raise_unrebuildable)).result(timeout=30)
        assert "raise_unrebuildable" in str(info.value.__cause__)
        # sys.exit in a task must not end the manager's program
        with pytest.raises(packmule.RemoteException, match="SystemExit: 4"):
            mgr.submit(PythonTask(sys.exit, 4)).result(timeout=30)


def test_runners_are_reused_only_for_the_same_cores_and_gpus(cluster: ClusterFactory) -> None:
    def pid_and_threads() -> tuple[int, str]:
        return os.getpid(), os.environ["OMP_NUM_THREADS"]

    with cluster(1, cores=2) as mgr:
        one = [mgr.submit(PythonTask(pid_and_threads, resources={"cores": 1})).result(timeout=30)
               for _ in range(3)]
        two = mgr.submit(PythonTask(pid_and_threads, resources={"cores": 2})).result(timeout=30)
        again = mgr.submit(PythonTask(pid_and_threads, resources={"cores": 1})).result(timeout=30)
        assert {t for _, t in one} == {"1"} and two[1] == "2"
        assert two[0] not in {p for p, _ in one}
        assert again[0] in {p for p, _ in one}


def test_a_dead_idle_runner_is_replaced(cluster: ClusterFactory) -> None:
    import psutil

    with cluster(1, cores=1) as mgr:
        assert mgr.submit(PythonTask(len, "a")).result(timeout=30) == 1
        worker = psutil.Process(mgr.worker_processes[0].pid)  # type: ignore[attr-defined]
        runners = worker.children()
        assert runners
        for r in runners:
            r.kill()
        psutil.wait_procs(runners, timeout=10)
        assert mgr.submit(PythonTask(len, "ab")).result(timeout=30) == 2
        assert mgr.stats().workers == 1


def test_callbacks_may_ask_the_manager_for_stats(cluster: ClusterFactory) -> None:
    with cluster(1) as mgr:
        seen: list[int] = []
        fut = mgr.submit(PythonTask(len, "abc"))
        fut.add_done_callback(lambda _f: seen.append(mgr.stats().tasks_succeeded))
        assert fut.result(timeout=30) == 3
        wait_until(lambda: seen, timeout=5)
        mgr.shutdown()
        with pytest.raises(RuntimeError, match="shut down"):
            mgr.submit(PythonTask(len, "x"))


def test_a_dead_manager_loop_fails_the_unfinished_tasks_clearly(cluster: ClusterFactory) -> None:
    with cluster(1) as mgr:
        wait_until(connected(mgr, 1))
        slow = mgr.submit(PythonTask(span, 30, resources={"cores": 1}))
        wait_until(lambda: mgr.stats().tasks["running"] == 1)
        os.kill(mgr.loop_pid, signal.SIGKILL)  # the loop process this manager started
        with pytest.raises(packmule.ManagerCrashed, match=r"loop process .* killed by SIGKILL"):
            slow.result(timeout=30)
        with pytest.raises(packmule.ManagerCrashed, match="crashed"):
            mgr.stats()


def test_callbacks_may_submit_big_tasks_while_big_results_flow(cluster: ClusterFactory) -> None:
    """The loop never blocks on the Manager's process: a callback sending a big task
    while the loop sends big results must not deadlock the two."""
    blob = b"x" * (2 << 20)
    with cluster(1) as mgr:
        wait_until(connected(mgr, 1))
        follow_ups: list[Any] = []

        def chain(fut: Any) -> None:
            if len(follow_ups) < 20:
                follow_ups.append(mgr.submit(PythonTask(len, blob)))

        firsts = [mgr.submit(PythonTask(bytes, 2 << 20)) for _ in range(20)]
        for f in firsts:
            f.add_done_callback(chain)
        assert all(len(f.result(timeout=60)) == 2 << 20 for f in firsts)
        wait_until(lambda: len(follow_ups) == 20, timeout=60)
        assert [f.result(timeout=60) for f in follow_ups] == [2 << 20] * 20


def _missing_here() -> None:
    raise ModuleNotFoundError("No module named 'only_on_the_worker'")


class _OnlyOnWorker:
    """Unpickles only where its (pretend) module exists: not in the manager."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_missing_here, ())


def _make_only_on_worker() -> _OnlyOnWorker:
    return _OnlyOnWorker()


def test_a_result_that_cannot_be_unpickled_fails_only_its_task(cluster: ClusterFactory) -> None:
    with cluster(1) as mgr:
        wait_until(connected(mgr, 1))
        bad = mgr.submit(PythonTask(_make_only_on_worker))
        with pytest.raises(packmule.SerializationError, match="only_on_the_worker"):
            bad.result(timeout=30)
        assert mgr.submit(PythonTask(len, "abc")).result(timeout=30) == 3


def test_shutdown_from_a_callback(cluster: ClusterFactory) -> None:
    with cluster(1) as mgr:
        wait_until(connected(mgr, 1))
        fut = mgr.submit(PythonTask(len, "ab"))
        fut.add_done_callback(lambda _: mgr.shutdown())
        assert fut.result(timeout=30) == 2
        wait_until(lambda: not mgr._reader.is_alive(), timeout=30)
        with pytest.raises(RuntimeError, match="shut down"):
            mgr.submit(PythonTask(len, "ab"))
