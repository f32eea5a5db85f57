"""The scheduler: retry policy and the queue manager."""
