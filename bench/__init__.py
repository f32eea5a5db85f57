"""Benchmarks for mta-engine: a loopback bench world (dnsmasq + smtp-sink) and workloads (see BENCH.md)."""
