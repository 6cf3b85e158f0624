"""Azure Storage backend: tables for state, queues for work, blobs for large payloads."""
