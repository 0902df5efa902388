"""The operator's tools: what a person looking at a deployment runs, from a Redis URL alone —
the ``procflow`` command line (``cli.py``: the demo and the commands; ``commands.py``: flows,
status, job, jobs, retry, cancel, delete, purge), the web dashboard (``dashboard/``) and the
``Operator`` both ask (``ops.py``).

Nothing here runs in a supervisor or a worker process. The package exports nothing itself, so
that the command line loads the dashboard's extra only when that command runs.
"""
