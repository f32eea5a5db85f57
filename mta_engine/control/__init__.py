"""The control socket: operate a running engine (status, shutdown, ...)."""
