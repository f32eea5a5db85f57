"""Test harness for real processes on loopback: process management, dnsmasq, SMTP sinks.

Contract: everything here only binds and sends to 127.0.0.0/8, stops only the processes it
started (by PID), and waits by polling against a deadline, never by fixed sleeps. Import the
helpers explicitly (``from tests.support.dnsmasq import DnsServer``); there are no autouse
fixtures. ``tests`` must be importable, so run pytest as ``python -m pytest`` from the repo root.
"""
