"""The agent: drains the ring, spools durably, exports to OTLP or the local store."""
