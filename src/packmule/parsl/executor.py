"""``packmule.WorkQueueExecutor``: Parsl's WorkQueueExecutor, on packmule.

Same constructor as ``parsl.executors.WorkQueueExecutor``; a Parsl program
changes one import. Workers (``packmule worker``) are started in blocks by a
Parsl provider; tasks are packed onto them by their resource specification.
"""

from __future__ import annotations

import collections
import datetime
import functools
import logging
import os
import pickle
import shlex
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import cloudpickle
from parsl.app.errors import RemoteExceptionWrapper
from parsl.data_provider.files import File as ParslFile
from parsl.data_provider.staging import Staging
from parsl.executors.errors import ExecutorError
from parsl.executors.status_handling import BlockProviderExecutor
from parsl.monitoring.message_type import MessageType
from parsl.monitoring.radios.base import RadioConfig
from parsl.providers import LocalProvider
from parsl.providers.base import ExecutionProvider
from parsl.utils import RepresentationMixin

from .. import File, Manager, PythonTask
from ..core.alloc import AllocationMode, CategoryConfig
from ..errors import PackmuleError, SerializationError
from ..protocol.security import read_password_file, write_new_password_file
from .radio import PackmuleRadio, PackmuleRadioReceiver
from .spec import parse_spec

log = logging.getLogger("packmule.parsl")

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@functools.lru_cache(maxsize=64)
def _load_function(blob: bytes) -> Callable[..., Any]:
    fn: Callable[..., Any] = pickle.loads(blob)
    return fn


def run_parsl_function(fn_blob: bytes, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """Run a Parsl app's function on the worker, the way Parsl's own workers do.

    The function arrives pickled on its own and is unpickled once per runner.
    The app's exceptions come back wrapped (Parsl unwraps and re-raises them),
    so only infrastructure failures count against packmule's own retries.
    """
    fn = _load_function(fn_blob)
    try:
        return fn(*args, **kwargs)
    except Exception:
        exc_type, exc, tb = sys.exc_info()
        assert exc_type is not None and exc is not None
        return RemoteExceptionWrapper(exc_type, exc, tb)


class _PickledFunctions:
    """Each app's function pickled once, not once per call (Parsl reuses the object)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._cache: collections.OrderedDict[int, tuple[Any, bytes]] = collections.OrderedDict()

    def dumps(self, fn: Callable[..., Any]) -> bytes:
        hit = self._cache.get(id(fn))
        if hit is not None and hit[0]() is fn:
            return hit[1]
        data: bytes = cloudpickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            ref = weakref.ref(fn)
        except TypeError:  # not weakly referenceable: do not cache
            return data
        self._cache[id(fn)] = (ref, data)
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return data


def _staged_path(f: ParslFile) -> str | None:
    """The sandbox-relative path of a File packmule stages, or None to leave it alone."""
    if f.scheme != "file":
        return None
    path = f.local_path or f.filepath
    if not path or os.path.isabs(path):
        return None  # absolute paths are taken to be on a shared filesystem
    return os.path.normpath(path)


class _ToParslLog(logging.Handler):
    """Passes packmule's warnings and errors to the handlers of Parsl's logger (parsl.log).

    One handler for all executors, attached to the ``packmule`` logger while at
    least one runs, so that two executors do not write each record twice. A
    handler that the record reaches anyway (one on ``packmule`` or above, such
    as the root logger's) is skipped.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.users = 0
        self.lock_users = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        reached: set[logging.Handler] = set()
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            reached.update(logger.handlers)
            logger = logger.parent if logger.propagate else None
        for handler in logging.getLogger("parsl").handlers:
            if handler not in reached and record.levelno >= handler.level:
                handler.handle(record)

    def attach(self) -> None:
        with self.lock_users:
            self.users += 1
            if self.users == 1:
                logging.getLogger("packmule").addHandler(self)

    def detach(self) -> None:
        with self.lock_users:
            self.users -= 1
            if self.users == 0:
                logging.getLogger("packmule").removeHandler(self)


_TO_PARSL_LOG = _ToParslLog()


def _annotate(task: PythonTask, fut: Future[Any]) -> None:
    """Put what the task asked for, got and used on its future (Work Queue's names).

    Reach it from a Parsl AppFuture as ``app_future.task_record["exec_fu"]``.
    """
    fut.resources_requested = task.resources  # type: ignore[attr-defined]
    fut.resources_allocated = task.allocation  # type: ignore[attr-defined]
    fut.resources_measured = dict(task.measured)  # type: ignore[attr-defined]
    fut.packmule_task = task  # type: ignore[attr-defined]


class WorkQueueExecutor(BlockProviderExecutor, RepresentationMixin):
    """Run Parsl apps on packmule workers, packed by ``parsl_resource_specification``.

    Every parameter of Parsl's ``WorkQueueExecutor`` is accepted with the same
    meaning; see docs/parsl-migration.md for each one. ``autolabel_algorithm``
    (new) chooses how ``autolabel`` learns allocations: auto (the default:
    optimal ladders that follow a changing workload; docs/allocation.md),
    max_throughput (the original's, exactly), min_waste, max,
    greedy_bucketing, exhaustive_bucketing or ladder. Differences that fix the
    original's traps: ``env`` really sets task environment variables; each
    executor gets its own default provider; ``max_retries=None`` means
    unlimited; ``port=0`` (the default) picks a free port, and a port that
    cannot be bound raises at start; a fresh secret is made for each run when
    ``project_password_file`` is not given.
    """

    radio_mode = "packmule"

    def __init__(
        self,
        label: str = "WorkQueueExecutor",
        provider: ExecutionProvider | None = None,
        working_dir: str = ".",
        project_name: str | None = None,
        project_password_file: str | None = None,
        address: str | None = None,
        port: int = 0,
        env: dict[str, str] | None = None,
        shared_fs: bool = False,
        storage_access: list[Staging] | None = None,
        use_cache: bool = False,
        source: bool = False,
        pack: bool = False,
        extra_pkgs: list[str] | None = None,
        autolabel: bool = False,
        autolabel_window: int = 1,
        autolabel_algorithm: str = "auto",
        autocategory: bool = True,
        max_retries: int | None = 1,
        init_command: str = "",
        worker_options: str = "",
        full_debug: bool = True,
        worker_executable: str | None = None,
        function_dir: str | None = None,
        coprocess: bool = False,
        scaling_cores_per_worker: int = 1,
        remote_monitoring_radio: RadioConfig | None = None,
    ) -> None:
        if provider is None:
            provider = LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1)
        BlockProviderExecutor.__init__(self, provider=provider, block_error_handler=True)
        if project_password_file is not None and not os.path.isfile(project_password_file):
            raise ExecutorError(
                self, f"project_password_file {project_password_file!r} does not exist"
            )
        if max_retries is not None and (not isinstance(max_retries, int) or max_retries < 0):
            raise ValueError(f"max_retries must be None or an int >= 0, got {max_retries!r}")
        if not isinstance(scaling_cores_per_worker, int) or scaling_cores_per_worker < 1:
            raise ValueError(
                f"scaling_cores_per_worker must be an int >= 1, got {scaling_cores_per_worker!r}"
            )
        self.label = label
        self.working_dir = working_dir
        self.project_name = project_name
        self.project_password_file = project_password_file
        self.address = address
        self.port = port
        self.env = dict(env or {})
        self.shared_fs = shared_fs
        self.storage_access = storage_access
        self.use_cache = use_cache
        self.source = source
        self.pack = pack
        self.extra_pkgs = extra_pkgs or []
        self.autolabel = autolabel
        self.autolabel_window = autolabel_window
        self.autolabel_algorithm = autolabel_algorithm
        # A bad mode or window is a configuration error: say so now, not at start().
        self._categories = CategoryConfig(
            mode=AllocationMode.parse(autolabel_algorithm) if autolabel else AllocationMode.FIXED,
            steady_n=autolabel_window,
        )
        self.autocategory = autocategory
        self.max_retries = max_retries
        self.init_command = init_command
        self.worker_options = worker_options
        self.full_debug = full_debug
        self.worker_executable = worker_executable
        self.function_dir = function_dir
        self.coprocess = coprocess
        self.scaling_cores_per_worker = scaling_cores_per_worker
        self.remote_monitoring_radio = remote_monitoring_radio or PackmuleRadio()
        self.manager: Manager | None = None
        self._outstanding_lock = threading.Lock()
        self._functions = _PickledFunctions()
        self._outstanding_cores: dict[int, int] = {}
        self._logging_to_parsl = False

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the manager; the provider's blocks are started by Parsl's scaling."""
        super().start()
        exec_dir = Path(self.run_dir) / self.label
        exec_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.project_password_file:
                self._password_file = Path(self.project_password_file)
                read_password_file(self._password_file)  # fails early with a clear message
            else:
                self._password_file = exec_dir / "password"
                write_new_password_file(self._password_file)
        except PackmuleError as exc:  # AuthenticationError: unreadable or empty
            raise ExecutorError(self, str(exc)) from exc
        except OSError as exc:
            raise ExecutorError(self, f"cannot write a new password file {self._password_file}: "
                                      f"{exc.strerror or exc}; give the executor a run_dir it "
                                      "can write, or project_password_file") from exc
        local = isinstance(self.provider, LocalProvider)
        if self.address is None:
            if local:
                self.address = "127.0.0.1"
            else:
                from parsl.addresses import get_any_address

                self.address = get_any_address()
        host = "127.0.0.1" if self.address in _LOOPBACK else "0.0.0.0"
        receiver = self.monitoring_receiver
        sink = receiver.deliver if isinstance(receiver, PackmuleRadioReceiver) else None
        joined = self._worker_joined if self.submit_monitoring_radio is not None else None
        _TO_PARSL_LOG.attach()  # before the manager starts: its first warnings count too
        self._logging_to_parsl = True
        try:
            self.manager = Manager(port=self.port, password_file=self._password_file, host=host,
                                   run_dir=exec_dir, message_sink=sink,
                                   default_category=self._categories,
                                   on_worker_joined=joined)
        except (OSError, PackmuleError) as exc:  # ManagerStartError, ManagerTimeout, password
            self._stop_logging_to_parsl()
            raise ExecutorError(self, str(exc)) from exc
        self.port = self.manager.port
        log.info("%s: packmule manager on %s:%d", self.label, self.address, self.port)

    def shutdown(self) -> None:
        """Stop the manager (its workers exit); Parsl cancels the blocks."""
        try:
            if self.manager is not None:
                self.manager.shutdown()
            super().shutdown()
        finally:
            self._stop_logging_to_parsl()

    def _stop_logging_to_parsl(self) -> None:
        if self._logging_to_parsl:
            self._logging_to_parsl = False
            _TO_PARSL_LOG.detach()

    def _worker_joined(self, event: dict[str, Any]) -> None:
        """(The manager's reader thread) a worker joined: a row of monitoring's node table.

        The block is the ``PARSL_WORKER_BLOCK_ID`` the worker's launch command
        exported (workers started otherwise have none).
        """
        radio = self.submit_monitoring_radio
        if radio is None:
            return
        resources = event.get("resources") or {}
        host = str(event.get("host", ""))
        block = str(event.get("block", ""))
        when = datetime.datetime.fromtimestamp(float(event.get("t") or time.time()))
        cores = int(resources.get("cores") or 0)
        radio.send((MessageType.NODE_INFO, {
            "run_id": self.run_id, "hostname": host, "uid": str(event.get("worker", "")),
            "block_id": block, "cpu_count": cores,
            "total_memory": int(resources.get("memory") or 0) << 20,  # MB to bytes
            "active": True, "worker_count": cores,
            "python_v": "", "timestamp": when, "last_heartbeat": when,
        }))

    def _get_launch_command(self, block_id: str) -> str:
        worker = self.worker_executable or f"{shlex.quote(sys.executable)} -m packmule worker"
        cmd = (f"{worker} {self.address}:{self.port} "
               f"--password-file {shlex.quote(str(self._password_file))}")
        if self.worker_options:
            cmd += " " + self.worker_options
        if self.init_command:
            cmd = f"{self.init_command} && {cmd}"
        return f"export PARSL_WORKER_BLOCK_ID={shlex.quote(str(block_id))}; {cmd}"

    # ------------------------------------------------------------ tasks
    def submit(self, func: Callable[..., Any], resource_specification: dict[str, Any],
               *args: Any, **kwargs: Any) -> Future[Any]:
        """Queue one app invocation; never blocks on the cluster."""
        if self.bad_state_is_set:
            raise self.executor_exception
        if self.manager is None:
            raise ExecutorError(self, "the executor has not been started")
        spec = parse_spec(resource_specification)
        inputs, outputs = ([], []) if self.shared_fs else self._staging(args, kwargs)
        category = spec.category or (getattr(func, "__name__", "parsl-default")
                                     if self.autocategory else "parsl-default")
        try:
            blob = self._functions.dumps(func)
        except Exception as exc:
            raise SerializationError(
                f"cannot send {getattr(func, '__name__', func)!r} to workers: {exc}"
            ) from exc
        task = PythonTask(
            run_parsl_function, blob, args, kwargs,
            resources=spec.resources, category=category, priority=spec.priority,
            max_retries=self.max_retries, env=self.env,
            input_files=inputs, output_files=outputs,
        )
        task.label = getattr(func, "__name__", None)  # the app's name in warnings and logs
        if self.pack:  # built from what the app imports; Parsl runs it on the worker
            task.pack_functions = (func,)
            task.extra_pkgs = (*self.extra_pkgs, "parsl")
        fut = self.manager.submit(task)
        assert task.id is not None
        fut.parsl_executor_task_id = task.id  # type: ignore[attr-defined]
        cores = spec.resources.cores if spec.resources.cores is not None else (
            self.workers_per_node if spec.resources.is_empty else self.scaling_cores_per_worker)
        with self._outstanding_lock:
            self._outstanding_cores[task.id] = int(cores)
        self._tasks[task.id] = fut
        fut.add_done_callback(functools.partial(_annotate, task))
        fut.add_done_callback(functools.partial(self._forget, task.id))
        return fut

    def _forget(self, task_id: int, _fut: object = None) -> None:
        with self._outstanding_lock:
            self._outstanding_cores.pop(task_id, None)
        self._tasks.pop(task_id, None)

    def _staging(
        self, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> tuple[list[File], list[File]]:
        """Parsl Files with relative paths travel with the task (no shared filesystem)."""
        ins: dict[str, File] = {}
        outs: dict[str, File] = {}

        def add(obj: Any, into: dict[str, File], cache: bool) -> None:
            if isinstance(obj, ParslFile):
                rel = _staged_path(obj)
                if rel is not None:
                    if into is ins and not os.path.exists(rel):
                        return  # not there yet (e.g. a future's output); nothing to send
                    into[rel] = File(rel, rel, cache=cache, optional=into is outs)

        for a in args:
            add(a, ins, self.use_cache)
        for k, v in kwargs.items():
            if k == "outputs":
                for f in v or ():
                    add(f, outs, False)
            elif k == "inputs":
                for f in v or ():
                    add(f, ins, self.use_cache)
            elif k in ("stdout", "stderr"):
                target = v[0] if isinstance(v, tuple) else v
                if isinstance(target, (str, os.PathLike)) and not os.path.isabs(target):
                    rel = os.path.normpath(target)
                    outs[rel] = File(rel, rel, optional=True)
                elif isinstance(target, ParslFile):
                    add(target, outs, False)
            else:
                add(v, ins, self.use_cache)
        return list(ins.values()), list(outs.values())

    # ------------------------------------------------------------ scaling
    def outstanding(self) -> int:
        """Cores asked for by tasks not yet finished (not the number of tasks)."""
        with self._outstanding_lock:
            return sum(self._outstanding_cores.values())

    @property
    def workers_per_node(self) -> int | float:
        """Cores one block's node offers: what makes ``outstanding()`` comparable."""
        cores = getattr(self.provider, "cores_per_node", None) or 0
        if self.manager is not None:
            cores = max(cores, self.manager.largest_worker.cores or 0)
        if not cores and isinstance(self.provider, LocalProvider):
            from ..worker.detect import detect_cores

            cores = detect_cores()
        return max(int(cores), self.scaling_cores_per_worker)

    def monitor_resources(self) -> bool:
        return True
