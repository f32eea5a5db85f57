"""Observability: operational logs (structlog) and the accounting log."""
