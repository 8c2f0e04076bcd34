"""What importing packmule says when an optional part is missing."""

from __future__ import annotations

import subprocess
import sys

import pytest

#: Run in a fresh interpreter with Parsl (or one of its dependencies) made unimportable.
_BLOCKED = """
import sys
sys.modules[{blocked!r}] = None  # import of it now fails, as if not installed
try:
    {statement}
except ImportError as exc:
    print(type(exc).__name__, exc.name, exc, type(exc.__cause__).__name__, sep="\\n")
else:
    print("imported")
"""


def run_blocked(blocked: str, statement: str) -> list[str]:
    """The exception's type, name, message and cause's type; or ["imported"]."""
    code = _BLOCKED.format(blocked=blocked, statement=statement)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True).stdout.strip().splitlines()


@pytest.mark.parametrize("statement", ["from packmule import WorkQueueExecutor",
                                       "import packmule.parsl",
                                       "import packmule; packmule.WorkQueueExecutor"])
def test_without_parsl_the_executor_says_what_to_install(statement: str) -> None:
    kind, name, message, cause = run_blocked("parsl", statement)
    assert (kind, name) == ("ModuleNotFoundError", "parsl"), message
    assert "needs Parsl" in message and "pip install 'packmule[parsl]'" in message
    assert cause == "ModuleNotFoundError"  # chained: the original error is kept


def test_a_broken_parsl_is_not_called_missing() -> None:
    kind, name, message, _ = run_blocked("typeguard", "from packmule import WorkQueueExecutor")
    assert (kind, name) == ("ImportError", "typeguard"), message
    assert "Parsl is installed but cannot be imported" in message and "typeguard" in message


def test_packmule_without_parsl_still_works() -> None:
    out = run_blocked("parsl", "import packmule; packmule.Resources(cores=1); "
                               "from packmule import Manager, PythonTask")
    assert out == ["imported"]
