"""Directory put on PYTHONPATH by `sm-ssh sandbox env` (holds the sandbox sitecustomize)."""
