"""The LMDB spool: durable messages, recipients, the due index and the event outbox."""
