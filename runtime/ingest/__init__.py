"""runtime/ingest."""
