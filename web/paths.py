"""Path segments are identifiers, and each means one thing.

The router matches the path as the client sent it, percent-escapes and all, and decodes
each variable segment on its own, strictly:

- `%2F` is a "/" inside the identifier, never a separator: the provider's game ids are
  opaque strings and may hold one, so `POST /api/games/round%2F7/refund` refunds game
  "round/7" (a server's PATH_INFO has already turned `%2F` into "/", which is why the
  router does not use it).
- a segment whose bytes are not UTF-8 (`%FF`) is refused with 400 naming the field, where
  the usual decoding would turn it into U+FFFD and let different ids land on one wallet.
"""

from urllib.parse import quote, unquote_to_bytes, urlsplit

from werkzeug.routing import BaseConverter, Map

from money.refusals import ApiError


class NotUtf8:
    """Stands for a path segment whose bytes are not UTF-8; refused before any view runs."""


class Segment(BaseConverter):
    """One whole path segment as text: its percent-escapes decoded as UTF-8, strictly."""

    def to_python(self, value):
        try:
            # A WSGI string holds bytes as latin-1 characters; the escapes are bytes too.
            return unquote_to_bytes(value.encode("latin-1")).decode("utf-8")
        except UnicodeError:
            return NotUtf8()

    def to_url(self, value):
        return quote(value, safe="")


class SegmentMap(Map):
    """A URL map that matches the path as sent, with `Segment` for every `<variable>`.

    It has no other converter: `<int:...>` or `<path:...>` would be handed the escapes
    undecoded, so a route that asks for one fails when it is added, not at a request.
    """

    default_converters = {"default": Segment, "string": Segment}

    def bind_to_environ(self, environ, server_name=None, subdomain=None):
        adapter = super().bind_to_environ(environ, server_name, subdomain)
        adapter.path_info = raw_path(getattr(environ, "environ", environ))
        return adapter


def raw_path(environ):
    """The request's path, still percent-encoded.

    gunicorn and werkzeug give the request target as sent in RAW_URI. Without it, or when
    the app is mounted below a SCRIPT_NAME, PATH_INFO is encoded again: its bytes are all
    there (so invalid UTF-8 is still refused), but a `%2F` in it has become a separator.
    """
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw and not environ.get("SCRIPT_NAME"):
        if not raw.startswith("/"):
            raw = urlsplit(raw).path  # the absolute form: http://host/path
        return raw.partition("?")[0].partition("#")[0]
    return quote(environ.get("PATH_INFO", ""), safe="/", encoding="latin-1")


def init_app(app):
    """Refuse, before any view or blueprint check runs, a path segment that is not UTF-8."""

    @app.url_value_preprocessor
    def refuse_undecodable(endpoint, values):
        fields = {name: ["Not valid UTF-8 once percent-decoded."]
                  for name, value in (values or {}).items() if isinstance(value, NotUtf8)}
        if fields:
            raise ApiError(400, "validation_error", "A path segment is not valid UTF-8.", fields)
