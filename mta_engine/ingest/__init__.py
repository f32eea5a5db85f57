"""Ingest: accepts submissions and commits them durably to the spool."""
