"""Process entry points (composition roots): supervisor, ingest, manager, worker."""
