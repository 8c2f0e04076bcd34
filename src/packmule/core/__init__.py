"""The pure scheduling core: no sockets, threads or clocks (time is passed in)."""
