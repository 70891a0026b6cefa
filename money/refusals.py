"""A refusal: an HTTP status and a stable machine-readable code, raised by any layer.

Plain Python, so the rules and the read side can refuse without knowing Flask; the web's
error handlers (web/errors.py) turn it into the one JSON error body.
"""


class ApiError(Exception):
    """A refusal with an HTTP status and a stable machine-readable code."""

    def __init__(self, status, code, message, fields=None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields
        self.headers = headers or {}

    @property
    def body(self):
        return error_body(self.code, self.message, self.fields)


def error_body(code, message, fields=None):
    """Build the error body every refusal uses: {"error": code, "message": text[, "fields"]}."""
    body = {"error": code, "message": message}
    if fields is not None:
        body["fields"] = fields
    return body
