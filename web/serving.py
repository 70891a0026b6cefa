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

import contextlib
import errno
import itertools
import json
import os
import re
import selectors
import socket
import sys
import threading
import time
import traceback
from functools import partial

from gunicorn import util
from gunicorn.http.errors import InvalidHeader, UnsupportedTransferCoding
from gunicorn.workers.gthread import TConn, ThreadWorker

DETAIL_CHARS = 200  # gunicorn's reason may quote the whole request line


class JsonRefusals:
    """Mix into any gunicorn worker class, ahead of it: `class W(JsonRefusals, SyncWorker)`.

    It overrides the `Worker.handle_error` every worker class shares (sync, gthread, gevent).
    WalletWorker (below) is gthread's, with it.
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
    its /healthz, so the master imports none of it (and forks its workers without the app's
    connections or threads).
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


# --- Every core, no stalls (issue 20) -----------------------------------------------------------
#
# The master accepts every connection and deals them to its workers in turn (the Dealer), so
# kept-alive connections, which stay with the worker that took them, are spread evenly: a
# worker that accepts for itself takes all that are waiting (gevent did: 64 connections -> 64
# and 0), and SO_REUSEPORT's hash leaves 10 of 16 on one worker about half the time.
#
# A worker (WalletWorker, gunicorn's gthread) reads each request in its main loop, without
# blocking, until the head and a body of announced length are in; only then does one of its
# threads parse and serve it. A client that sends half a request holds no thread (the
# slow-client guarantee), and a database call that blocks (a commit's fsync, a checkpoint, a
# long read) holds its thread only: sqlite3 and psycopg release the GIL while they wait, and
# each thread takes a connection of its own (db.get_db).

# A body of announced length up to this many bytes is read in the main loop (the app's limit
# is 64 KiB): a longer one is refused by the app before it is read.
BUFFERED_BODY = 64 * 1024
# A thread reading the rest of a body it was handed early (chunked, `Expect: 100-continue`)
# gives up after this many seconds of silence: the app answers 400 unreadable_body.
BODY_READ_TIMEOUT = 10
# A thread back from the database (which it waited for without the GIL) waits for the GIL at
# most this long while another thread runs Python: Python's 5 ms default, paid at each of a
# callback's nine statements while it holds SQLite's write lock, made every writer queue
# behind it (paced load on a busy machine, two pairs of alternated runs: p50 lower at 0.5 ms).
SWITCH_INTERVAL_S = 0.0005
READY, NOT_TAKING = b"ready", b"not taking"  # what a worker tells the Dealer
_HEAD_END = b"\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*(\d{1,18})[ \t]*(?=\r\n|$)", re.IGNORECASE)
_HANDED_EARLY = re.compile(rb"\r\n(transfer-encoding|expect)[ \t]*:", re.IGNORECASE)


class _Connection(socket.socket):
    """A client socket that, when made "blocking" for a thread, blocks at most BODY_READ_TIMEOUT."""

    __slots__ = ()

    def setblocking(self, flag):
        self.settimeout(BODY_READ_TIMEOUT if flag else 0.0)


def request_is_whole(data, max_head):
    """Whether `data` (what a connection has sent so far) holds a whole request head and, when
    it announces a body of known length not over BUFFERED_BODY, that body: what a thread can
    serve without waiting for the client. A head too long for gunicorn counts as whole (gunicorn
    refuses it at once), and so does one whose body a thread must read itself (chunked, an
    `Expect: 100-continue` waiting for gunicorn's answer, a body over BUFFERED_BODY)."""
    start = len(data) - len(data.lstrip(b"\r\n"))  # empty lines before a request line are ignored
    end = data.find(_HEAD_END, start)
    if end < 0:
        return len(data) - start > max_head
    head = data[:end]
    if _HANDED_EARLY.search(head):
        return True
    lengths = _CONTENT_LENGTH.findall(head)
    if len(lengths) != 1:
        return True  # no body, or framing gunicorn refuses
    length = int(lengths[0])
    return length > BUFFERED_BODY or len(data) - end - len(_HEAD_END) >= length


class WalletWorker(JsonRefusals, ThreadWorker):
    """gunicorn's gthread worker, taking its connections from the Dealer, handing a thread only
    whole requests, and refusing in JSON. (HTTP/1.1 without TLS: a platform's router or a proxy
    in front terminates TLS.)"""

    channel = None  # this worker's end of its socketpair with the Dealer (set in pre_fork)

    def init_process(self):
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        # The longest head gunicorn accepts; past it gunicorn refuses without waiting.
        cfg = self.cfg
        self.max_head = cfg.limit_request_line + cfg.limit_request_fields * (cfg.limit_request_field_size + 2) + 4
        super().init_process()

    def run(self):
        if self.channel is not None:
            self.channel.setblocking(False)
        super().run()

    def set_accept_enabled(self, enabled):
        """Take connections from the Dealer's channel (never from the listeners themselves), and
        tell the Dealer: it deals to a worker only while it takes them (not before it can serve,
        nor while it holds worker_connections, nor once it is stopping)."""
        if self.channel is None:  # served without gunicorn.conf.py's hooks: no Dealer
            return super().set_accept_enabled(enabled)
        if enabled == self._accepting:
            return
        if enabled:
            self.poller.register(self.channel, selectors.EVENT_READ, self.take)
        else:
            self.poller.unregister(self.channel)
        self._accepting = enabled
        with contextlib.suppress(OSError):  # the master is gone: the worker stops anyway
            self.channel.send(READY if enabled else NOT_TAKING)

    def take(self, channel):
        """Receive connections the Dealer sent, and start reading their first request."""
        try:
            message, fds, _, _ = socket.recv_fds(channel, 16, 64)
        except (BlockingIOError, InterruptedError):
            return
        if not message and not fds:  # the master is gone
            self.alive = False
            return
        for fd in fds:
            client = _Connection(fileno=fd)
            self.nr_conns += 1
            try:
                peer, local = client.getpeername(), client.getsockname()
            except OSError:  # gone already
                self.nr_conns -= 1
                client.close()
                continue
            self.read_request(TConn(self.cfg, client, peer, local))

    def read_request(self, conn, data=b""):
        """Read the connection's next request in the main loop until a thread can serve it whole."""
        conn.request = bytearray(data)
        if request_is_whole(conn.request, self.max_head):
            self.serve(conn)
            return
        conn.sock.setblocking(False)
        # Whole within the keep-alive time, or dropped (murder_pending): however slowly it trickles.
        conn.timeout = time.monotonic() + self.cfg.keepalive
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_request_bytes, conn))

    def on_request_bytes(self, conn, client):
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            conn.request += data
            if not request_is_whole(conn.request, self.max_head):
                return
        self.poller.unregister(conn.sock)
        self.pending_conns.remove(conn)
        if not data and not conn.request:  # closed between requests
            self.nr_conns -= 1
            conn.close()
            return
        # Whole, or the client stopped sending (the thread's parser then answers as gunicorn does).
        self.serve(conn)

    def serve(self, conn):
        """Hand a connection whose request is read to a thread."""
        data, conn.request = bytes(conn.request), None
        conn.init()
        conn.parser.unreader.unread(data)
        super().enqueue_req(conn)

    def enqueue_req(self, conn):
        # gunicorn calls this for a kept-alive connection that read ahead into its next request,
        # and (with no Dealer) for a connection it accepted itself.
        self.read_request(conn, conn.parser.unreader.take_buffered() if conn.parser else b"")

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection sends its next request: read it in the main loop first."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self.read_request(conn)


class Dealer:
    """In the master: accept every connection and deal them to the workers in turn.

    Each worker has a Unix socketpair with the master; a connection's descriptor is sent over
    it (SCM_RIGHTS) and the master closes its own copy. A worker is dealt connections once it
    said it is ready, until it exits; while no worker is ready, connections wait in the
    listeners' backlog. A thread of the master runs it (it only accepts and sends)."""

    def __init__(self, listeners, log):
        self.listeners, self.log = listeners, log
        self.selector = selectors.DefaultSelector()
        self.ready = []  # master ends of the ready workers' channels, in dealing order
        self.ends = {}  # worker -> (master end, worker end)
        self.turn = itertools.count()
        self.lock = threading.Lock()
        self.accepting = False

    def add(self, worker):
        """In the master, before the worker is forked: make its channel."""
        master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        master_end.setblocking(False)
        worker.channel = worker_end
        with self.lock:
            self.ends[worker] = (master_end, worker_end)
            self.selector.register(master_end, selectors.EVENT_READ, worker)

    def in_worker(self, worker):
        """In a freshly forked worker: close every descriptor of the Dealer's but its own channel."""
        for master_end, worker_end in self.ends.values():
            master_end.close()
            if worker_end is not worker.channel:
                worker_end.close()
        self.selector.close()

    def remove(self, worker):
        """In the master, when a worker exited."""
        with self.lock:
            ends = self.ends.pop(worker, None)
            if ends is None:
                return
            if ends[0] in self.ready:
                self.ready.remove(ends[0])
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(ends[0])
            self._listen(bool(self.ready))
        for end in ends:
            end.close()

    def start(self):
        threading.Thread(target=self.run, name="dealer", daemon=True).start()

    def _listen(self, on):
        if on == self.accepting:
            return
        for listener in self.listeners:
            # A listener the master closed (it is stopping: gunicorn closes them before it reaps
            # the workers, whose exits land in remove()) has no socket left to watch.
            with contextlib.suppress(AttributeError, OSError, KeyError, ValueError):
                if on:
                    listener.setblocking(False)
                    self.selector.register(listener, selectors.EVENT_READ, None)
                else:
                    self.selector.unregister(listener)
        self.accepting = on

    def run(self):
        while True:
            try:
                events = self.selector.select(timeout=1.0)
            except (OSError, ValueError):  # the master closed the listeners: it is stopping
                return
            for key, _ in events:
                try:
                    if key.data is None:
                        self.deal(key.fileobj)
                    else:
                        self.hear(key.fileobj, key.data)
                except (OSError, ValueError, KeyError):
                    if not self.listeners or any(listener.fileno() < 0 for listener in self.listeners):
                        return

    def hear(self, master_end, worker):
        """A worker said it takes connections, or no longer does (or its end closed)."""
        try:
            message = master_end.recv(16)
        except (BlockingIOError, InterruptedError):
            return
        with self.lock:
            if message == READY:
                if master_end not in self.ready:
                    self.ready.append(master_end)
            elif master_end in self.ready:
                self.ready.remove(master_end)
            if not message:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(master_end)
            self._listen(bool(self.ready))

    def deal(self, listener):
        try:
            client, _ = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self.log.error("Dealer: cannot accept a connection: %s", error)
                time.sleep(0.1)
                return
            raise
        with client, self.lock:
            for _ in range(len(self.ready)):
                end = self.ready[next(self.turn) % len(self.ready)]
                try:
                    socket.send_fds(end, [b"c"], [client.fileno()])
                    return
                except (BlockingIOError, InterruptedError, ConnectionError):
                    continue  # that worker's channel is full or gone: the next one
            self.log.warning("Dealer: no worker could take a connection; closed it")
