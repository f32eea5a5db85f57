"""Delivery status: bounce classification (``classify``), RFC 3463 codes and RFC 3464 reports.

Contract: pure values and functions. Nothing under ``mta_engine.dsn`` opens sockets, reads a
clock, draws random numbers or logs; the only file access is loading rule files on request.
"""
