"""gunicorn's settings, read from the working directory: the Procfile's line uses them unchanged.

Replication (LITESTREAM_REPLICA_URL): the master starts one Litestream for the whole service
before any worker serves, and stops it when gunicorn stops. See replication.py.
"""

import replication


def on_starting(server):
    replication.on_starting(server)


def on_exit(server):
    replication.on_exit(server)
