"""The client side: what runs in the user's own process to create, read, delete and wait for
jobs — ``Flow`` (``flow.py``, its reads ``reading.py``), ``AsyncFlow`` (``aio.py``, public as
``procflow.aio``; ``aio_hub.py`` the subscription its waits share), the operations both drive,
written once without I/O (``core.py``), and waiting (``waiting.py``).

Imported by name (``procflow.Flow``, ``procflow.aio.AsyncFlow``); this package exports nothing
itself, so that importing one of its modules loads no other.
"""
