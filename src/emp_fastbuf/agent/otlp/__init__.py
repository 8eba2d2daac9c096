"""OTLP for the agent: the HTTP transport (``http``), cumulative metric aggregation
(``metrics``) and the protobuf builders from decoded records (``reference``)."""
