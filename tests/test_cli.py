from __future__ import annotations

import subprocess
import sys

import pytest

from packmule.cli import build_parser


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if k != "PACKMULE_PASSWORD"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "packmule", *args], capture_output=True,
                          text=True, timeout=60, env=full_env, check=False)


def test_worker_help_documents_every_flag() -> None:
    out = run("worker", "--help").stdout
    for flag in ("--cores", "--memory", "--disk", "--gpus", "--password-file", "--workdir",
                 "--idle-timeout", "--connect-timeout", "--single-shot"):
        assert flag in out
    assert "Exit codes" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["worker", "nohost"], "expected HOST:PORT"),
        (["worker", "h:1", "--cores", "-2"], "must not be negative"),
        (["worker", "h:1", "--memory", "lots"], "expected a whole number"),
        (["worker", "h:1", "--idle-timeout", "0"], "must be positive"),
    ],
)
def test_bad_arguments_are_explained(argv: list[str], needle: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert needle in capsys.readouterr().err


def test_worker_without_secret_says_how_to_give_one() -> None:
    res = run("worker", "127.0.0.1:1")
    assert res.returncode == 3
    assert "--password-file" in res.stderr and "PACKMULE_PASSWORD" in res.stderr


def test_worker_gives_up_when_no_manager_is_reachable() -> None:
    res = run("worker", "127.0.0.1:1", "--connect-timeout", "1",
              env={"PACKMULE_PASSWORD": "x"})
    assert res.returncode == 1
    assert "no manager reachable" in res.stderr


def test_worker_idle_timeout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from packmule import Manager
    from packmule.local import start_worker

    with Manager(run_dir=tmp_path) as mgr:
        proc = start_worker(mgr, cores=1, memory=10, disk=10,
                            extra_args=["--idle-timeout", "1"], stderr=subprocess.PIPE)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0
        assert b"idle for 1 s" in err


def test_local_workers_log_to_files_and_their_errors_still_show(
        tmp_path, capfd: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    from packmule import Manager, PythonTask
    from packmule.local import start_worker, stop_worker, worker_log_dir

    from .conftest import wait_until

    with Manager(run_dir=tmp_path / "run") as mgr:
        good = start_worker(mgr, cores=1, memory=100, disk=100,
                            extra_args=["--workdir", str(tmp_path)])
        bad = start_worker(mgr, cores=1, memory=100, disk=100,
                           extra_args=["--idle-timeout", "0"])  # refused at once
        mine = start_worker(mgr, cores=1, memory=100, disk=100,
                            extra_args=["--idle-timeout", "0"], log_file=tmp_path / "w.log")
        try:
            assert mgr.submit(PythonTask(abs, -3)).result(timeout=30) == 3
            assert bad.wait(timeout=30) == 2 and mine.wait(timeout=30) == 2
            assert good.log_file == worker_log_dir(mgr) / "worker-1.log"
            assert bad.log_file == worker_log_dir(mgr) / "worker-2.log"
            assert mine.log_file == tmp_path / "w.log"
            with pytest.raises(ValueError, match="log_file= or stderr="):
                start_worker(mgr, log_file=tmp_path / "x.log", stderr=subprocess.DEVNULL)
        finally:
            for proc in (good, bad, mine):
                stop_worker(proc)
    assert good.log_file is not None and bad.log_file is not None
    wait_until(lambda: "session ended" in good.log_file.read_text())  # type: ignore[union-attr]
    assert "connected to manager" in good.log_file.read_text()
    wait_until(lambda: "must be positive" in bad.log_file.read_text())  # type: ignore[union-attr]
    err = ""

    def both_refusals_shown() -> bool:
        nonlocal err
        err += capfd.readouterr().err
        return err.count("--idle-timeout: must be positive") == 2

    # what is not routine reaches this program's stderr too, and the routine does not
    wait_until(both_refusals_shown)
    assert "connected to manager" not in err
