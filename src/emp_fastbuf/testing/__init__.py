"""Test support shipped with the package: a real OTLP/HTTP receiver on 127.0.0.1 that
decodes with the official protobuf schemas (``receiver``), shared by the tests and bench."""
