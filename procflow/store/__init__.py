"""The Redis layer: key names (``procflow.store.keys``), the Lua scripts and the one class
that issues every Redis command (``procflow.store.redis``)."""
