"""The one error path: every 4xx/5xx body is {"error": code, "message": text[, "fields"]}."""

from flask import jsonify
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

import db
from money.refusals import ApiError, error_body

UNEXPECTED = ("internal_error", "An unexpected error occurred.")  # every 500: no detail leaks


def error_response(status, code, message, fields=None):
    """Return a JSON error response."""
    response = jsonify(error_body(code, message, fields))
    response.status_code = status
    return response


def code_for_status(status):
    """The code for a refusal known by its HTTP status alone: the status's name, e.g. 413 is
    `request_entity_too_large` (werkzeug's, and gunicorn's own refusals, see serving.py)."""
    return HTTP_STATUS_CODES.get(status, "Unknown Error").lower().replace(" ", "_").replace("'", "")


def register(app):
    """Answer every error with JSON, never an HTML page."""

    @app.errorhandler(ApiError)
    def handle_api_error(exc):
        response = error_response(exc.status, exc.code, exc.message, exc.fields)
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(ValidationError)
    def handle_validation_error(exc):
        return error_response(400, "validation_error", "The request body is invalid.", exc.messages)

    @app.errorhandler(db.DatabaseUnavailable)
    def handle_database_unavailable(exc):
        db.unavailable(exc)  # logged once per outage
        # Nothing was changed, unless the connection dropped while committing, when nobody can
        # know: either way the same request again (same callback, same reference) is safe.
        response = error_response(
            503, "database_unavailable",
            "The database is unavailable. Retry the same request shortly: if it was applied before the "
            "database went away, the retry answers as the first time and moves nothing twice.")
        response.headers["Retry-After"] = str(db.RETRY_AFTER_S)
        return response

    @app.errorhandler(HTTPException)
    def handle_http_exception(exc):
        response = error_response(exc.code, code_for_status(exc.code), exc.description)
        for name, value in exc.get_headers():
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def handle_unexpected(exc):
        app.logger.exception("unhandled error")
        return error_response(500, *UNEXPECTED)
