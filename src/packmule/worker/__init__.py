"""The worker daemon: resource detection, runners, sandboxes."""
