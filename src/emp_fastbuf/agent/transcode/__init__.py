"""The agent's native bulk path (``_transcode.pyx``): raw lane records, parsed as
untrusted bytes, straight to OTLP request bytes and to the store's row tuples."""
