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
