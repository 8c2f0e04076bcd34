"""The manager: public API and the I/O shell around the scheduling core."""

from .manager import HEARTBEAT_INTERVAL, LEASE, Manager, ManagerStats

__all__ = ["HEARTBEAT_INTERVAL", "LEASE", "Manager", "ManagerStats"]
