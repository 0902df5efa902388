"""Everything that runs inside a worker process (never imports the supervisor)."""
