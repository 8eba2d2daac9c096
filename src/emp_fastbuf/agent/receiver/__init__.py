"""The agent's OTLP receiver: OTLP/HTTP (and OTLP/gRPC with the grpc extra) on loopback,
so that every process on the machine gets the spool, the retries and the store.

Received requests become ring-format records (``convert``, natively for logs in
``_logs``), are written to the spool as one durable file per group commit (``ingest``)
and only then answered; from there they flow exactly like ring data.
"""
