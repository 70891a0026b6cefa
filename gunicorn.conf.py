# gunicorn reads this file from its working directory, so the Procfile's line and the
# README's local gunicorn line both use it unchanged.
# --- Worker class and HTTP limits (README: "Refused by gunicorn") ---------------------------
# gunicorn's own refusals (bad framing, the limits below) answer the JSON error body:
# serving.JsonRefusals overrides the Worker.handle_error all worker classes share, so it
# mixes into whichever class is chosen.
from gunicorn.workers.sync import SyncWorker

from serving import JsonRefusals, check_before_serving


class JsonSyncWorker(JsonRefusals, SyncWorker):
    """gunicorn's sync worker, refusing in JSON."""


worker_class = JsonSyncWorker
# The request line (method, path, query, version) may be 8190 bytes, gunicorn's largest: the
# longest request the API serves, GET /api/games with every filter and the cursor at their
# longest (255 four-byte characters percent-encoded), is about 7,300. Past it: JSON 414.
limit_request_line = 8190
# At most 100 header fields of at most 8190 bytes each (gunicorn's defaults). Past: JSON 431.
limit_request_fields = 100
limit_request_field_size = 8190


# --- Before any worker starts -------------------------------------------------------------


def on_starting(server):
    """A wrong setting or an unreachable database stops the service here, with one clear line."""
    check_before_serving()
