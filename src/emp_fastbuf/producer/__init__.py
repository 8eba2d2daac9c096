"""What runs inside worker processes: the public API (``api``), the native encoder that
writes records straight into the ring (``_codec.pyx``), the agent autostart (``spawn``)
and the narrow surface the integrations use (``bridge``). Nothing here imports the agent."""
