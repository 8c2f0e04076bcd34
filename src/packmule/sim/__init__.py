"""Simulators that drive the pure core without sockets (allocation on task-resource traces)."""
