"""The Redis layer: key names (:mod:`procflow.store.keys`), the Lua scripts and the one class
that issues every Redis command (:mod:`procflow.store.redis`)."""
