"""Everything that runs inside a worker process (never imports the supervisor): the loop, the
process entry point, and ``reporting.py``, which a worker function calls (``procflow.progress``)."""
