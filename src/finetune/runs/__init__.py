"""A run directory on disk: every name in it, its checkpoints, reading a finished run, atomic writes."""
