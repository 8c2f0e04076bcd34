"""The manager-worker wire protocol: typed messages and their security."""
