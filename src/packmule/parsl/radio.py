"""A Parsl monitoring radio carried over packmule's own connection.

Parsl's default radio for this executor family writes messages to files on a
filesystem shared with the submit side. :class:`PackmuleRadio` needs none: on
the worker, the sender writes each message into a directory private to the
task (``$PACKMULE_RADIO_DIR``); the worker sends them back with the task's
result, over the authenticated, encrypted connection; the executor puts them
into Parsl's monitoring queue.
"""

from __future__ import annotations

import os
import pickle
import uuid
from multiprocessing.queues import Queue
from typing import Any

from parsl.monitoring.radios.base import (
    MonitoringRadioReceiver,
    MonitoringRadioSender,
    RadioConfig,
)

RADIO_DIR_ENV = "PACKMULE_RADIO_DIR"


class PackmuleRadioSender(MonitoringRadioSender):
    """Writes each message atomically into the task's radio directory."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def send(self, message: object) -> None:
        name = os.path.join(self.directory, uuid.uuid4().hex)
        with open(name + ".tmp", "wb") as f:
            pickle.dump(message, f)
        os.rename(name + ".tmp", name + ".msg")


class PackmuleRadioReceiver(MonitoringRadioReceiver):
    """Delivers messages that came back with task results into Parsl's queue."""

    def __init__(self, queue: Queue[Any]) -> None:
        self.queue = queue

    def deliver(self, messages: list[bytes]) -> None:
        for data in messages:
            self.queue.put(pickle.loads(data))

    def shutdown(self) -> None:
        pass


class PackmuleRadio(RadioConfig):
    """Monitoring messages ride back with task results: no shared filesystem needed."""

    def create_sender(self) -> MonitoringRadioSender:
        directory = os.environ.get(RADIO_DIR_ENV)
        if not directory:
            raise RuntimeError(
                f"${RADIO_DIR_ENV} is not set: PackmuleRadio only works inside packmule tasks"
            )
        return PackmuleRadioSender(directory)

    def create_receiver(
        self, *, run_dir: str, resource_msgs: Queue[Any]
    ) -> MonitoringRadioReceiver:
        return PackmuleRadioReceiver(resource_msgs)

    def __repr__(self) -> str:
        return "PackmuleRadio()"
