"""What gunicorn needs beyond the app (gunicorn.conf.py calls into it): a check before any
worker starts, and gunicorn's own refusals answered with the service's JSON error body.

gunicorn refuses some requests itself, before the app sees them: bad framing (two
Content-Length headers, a negative one, both Transfer-Encoding and Content-Length, an
unknown transfer coding), a request line or headers past the limits in gunicorn.conf.py.
It answers those with an HTML page (and an unknown transfer coding with a 501, here a 400). `JsonRefusals` mixed into the worker class keeps
everything gunicorn decides (the status, the WARNING "Invalid request from ip=..." it logs,
the access log line, closing the connection) and writes {"error", "message"} instead.
Such requests never reach the app, so they are not in the callbacks audit.
"""

import json
import os
import sys
import traceback

from gunicorn import util
from gunicorn.http.errors import InvalidHeader, UnsupportedTransferCoding

DETAIL_CHARS = 200  # gunicorn's reason may quote the whole request line


class JsonRefusals:
    """Mix into any gunicorn worker class, ahead of it: `class W(JsonRefusals, SyncWorker)`.

    It overrides the `Worker.handle_error` every worker class shares (sync, gthread, gevent).
    """

    def handle_error(self, req, client, addr, exc):
        if isinstance(exc, UnsupportedTransferCoding):
            # gunicorn answers 501; here bad input is never a 5xx (README), so it is the 400 of
            # any other bad Transfer-Encoding, logged and access-logged as such.
            exc = InvalidHeader(f"TRANSFER-ENCODING {exc.hdr}", req=req)
        page = _Page()
        super().handle_error(req, page, addr, exc)  # classifies, logs, writes its page to `page`
        try:
            _, status, reason = page.data.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            status = int(status)
        except ValueError:  # no page, or not one we can read: send what gunicorn wrote, as it is
            answer = page.data
        else:
            answer = _response(status, reason, _body(status, reason, exc))
        if not answer:
            return
        try:
            util.write_nonblock(client, answer)
        except Exception:  # the client may be gone; gunicorn ignores this failure the same way
            self.log.debug("Failed to send error message.")


class _Page:
    """Stands in for the client's socket while gunicorn writes its page, and keeps it."""

    data = b""

    def gettimeout(self):
        return 0.0  # "non-blocking": gunicorn's write_nonblock then just writes

    def sendall(self, data):
        self.data += data


def _body(status, reason, exc):
    from web import errors  # in the worker: the master imports none of the app (check_before_serving)

    if status >= 500:
        return errors.error_body(*errors.UNEXPECTED)
    detail = str(exc)
    if len(detail) > DETAIL_CHARS:
        detail = detail[:DETAIL_CHARS] + "..."
    return errors.error_body(errors.code_for_status(status), f"{reason}: {detail}")


def _response(status, reason, body):
    payload = (json.dumps(body, sort_keys=True, separators=(",", ":")) + "\n").encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n")
    return head.encode("latin-1") + payload


def parse_metrics_port(text):
    """METRICS_PORT: None when unset, else a TCP port (1-65535); ValueError otherwise."""
    if text is None or not str(text).strip():
        return None
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise ValueError(f"METRICS_PORT must be a TCP port (1-65535), not {text!r}")
    return port


def binds(environ):
    """gunicorn's addresses: its own default (0.0.0.0:$PORT, else 127.0.0.1:8000), plus every
    address of METRICS_PORT when set, where a platform's scraper that cannot send a token
    (Fly's) reads /metrics: a port its private network reaches and the public one does not."""
    main = f"0.0.0.0:{environ['PORT']}" if environ.get("PORT") else "127.0.0.1:8000"
    port = parse_metrics_port(environ.get("METRICS_PORT"))
    return [main] if port is None else [main, f"[::]:{port}"]


def check_before_serving(arbiter):
    """Refuse to start, with one clear line, on a configuration the app refuses or a database
    it cannot reach (a wrong password, host or scheme in DATABASE_URL), before any worker
    boots: a worker that fails to boot would stop gunicorn with a traceback instead.

    The app gunicorn serves is built, as a worker builds it, in a forked child and asked for
    its /healthz, so the master imports none of it: a gevent worker must patch the standard
    library before the app's modules (psycopg among them) load.
    """
    pid = os.fork()
    if pid == 0:
        os._exit(_check(arbiter.app))
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(1)  # the child said why


def _check(application):
    from click import ClickException  # how the app says a setting is wrong (db.StartupError)
    from werkzeug.test import Client

    # Only the verdict below is printed: the app's own log lines (an outage it would answer
    # 503 to, the unset CALLBACK_TOKEN) come again from the workers if it starts.
    os.environ["LOG_LEVEL"] = "CRITICAL"
    try:
        wsgi = application.wsgi()
        answer = Client(wsgi).get("/healthz")
    except ClickException as error:
        return _refuse(error.format_message())
    except Exception:  # not a configuration problem: a bug, shown whole
        traceback.print_exc()
        return _refuse("building the app failed (above)")
    if answer.status_code != 200:
        body = answer.get_json(silent=True) or {}
        return _refuse(body.get("message") or f"/healthz answered {answer.status}")
    return 0


def _refuse(reason):
    print(f"The service cannot start: {reason}", file=sys.stderr, flush=True)
    return 1


def refuse(reason):
    """Stop the master before it serves, with the same one line as check_before_serving."""
    _refuse(reason)
    raise SystemExit(1)
