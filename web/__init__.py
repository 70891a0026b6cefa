"""The web edge: Flask blueprints, the one error path, and what only they use (bodies, paths, gunicorn glue)."""
