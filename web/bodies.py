"""Read a request body whole, or refuse it whole: the one place a body is read.

The limit is MAX_CONTENT_LENGTH, checked here on what actually arrives, however it is
framed: a Content-Length above it is refused before reading, and a chunked body (which
declares no length) is read one byte past it and refused. werkzeug's own limit on a chunked
body stops reading at the limit without an error, so a view would get the first 64 KiB
as if it were the whole body; nothing here relies on it.
"""

from flask import current_app, request
from werkzeug.wsgi import get_input_stream

from money.refusals import ApiError
from web.errors import code_for_status

READ_SIZE = 16 * 1024


def read_body():
    """Return the request body, all of it.

    413 when it is longer than MAX_CONTENT_LENGTH; 400 when it cannot be read to its end
    (a malformed chunk, a client gone or a body shorter than its Content-Length). Either
    way nothing of it is used.
    """
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    declared = request.content_length  # None when chunked or absent
    if declared is not None and declared > limit:
        raise _too_large(limit)
    # Framed by Content-Length, or terminated by the server (a chunked body under gunicorn);
    # no limit passed: ours is applied below, on what is read.
    stream = get_input_stream(request.environ, max_content_length=None)
    parts, size = [], 0
    try:
        while size <= limit:
            part = stream.read(min(READ_SIZE, limit + 1 - size))
            if not part:
                break
            parts.append(part)
            size += len(part)
    except Exception as exc:  # whatever the server raises while reading, the request is unreadable
        raise ApiError(400, "unreadable_body", f"The request body could not be read to its end: {_why(exc)}") from None
    if size > limit:
        raise _too_large(limit)
    if declared is not None and size < declared:
        raise ApiError(400, "unreadable_body",
                       f"The request body ended after {size} of the {declared} bytes its Content-Length announced.")
    return b"".join(parts)


def _too_large(limit):
    return ApiError(413, code_for_status(413), f"The request body is larger than {limit} bytes.")


def _why(exc):
    """Name a read failure in a few words (a server's exception may quote a whole line)."""
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."
