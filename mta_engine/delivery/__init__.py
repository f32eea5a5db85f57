"""Delivery: the asyncio SMTP session driver and connection-reuse bookkeeping."""
