"""A real gunicorn serving the app, for the tests where separate processes matter and for bench/.

`Gunicorn(...)` starts `python -m gunicorn "app:create_app()"` in the repository root, as
the Procfile does (so it reads gunicorn.conf.py), on a database file of the test's choosing,
in its own process group (so a test can `kill()` the master and every worker at once, as a
crash would) and waits for /healthz. The tests use it through the `gunicorn` fixture in tests/conftest.py,
which stops every server a test started.
"""

import decimal
import errno
import http.client
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import app as app_module
from harness.samples import ADMIN_TOKEN, CALLBACK_TOKEN, FINISH, START, body, store_settings

ROOT = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 20
REQUEST_TIMEOUT = 30
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def flask_cli(*args, timeout=60, **environment):
    """Run `flask --app app ARGS` as an operator would: a process of its own, in the repository
    root, with the machine's environment less the service's settings plus `environment`
    (`timeout` seconds at most; None: as long as it takes)."""
    env = {key: value for key, value in os.environ.items() if key not in app_module.ENVIRONMENT}
    env.update(environment)
    return subprocess.run([sys.executable, "-m", "flask", "--app", "app", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def free_port():
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children(pid):
    """The ids of a process's live children (a gunicorn master's workers), via /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces, so split after its last ')'.
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.add(int(entry.name))
    return found


class RawAnswer:
    """An HTTP answer read off a socket: status, headers (lower-case names) and body."""

    def __init__(self, data):
        head, _, self.body = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split(" ")[1])
        self.headers = {name.strip().lower(): value.strip()
                        for name, _, value in (line.partition(":") for line in lines)}

    @property
    def json(self):
        """The body as JSON, asserting the answer says it is JSON."""
        assert self.headers.get("content-type") == "application/json", (self.status, self.headers, self.body)
        return json.loads(self.body)

    def __repr__(self):
        return f"RawAnswer({self.status}, {self.body[:300]!r})"


def workers_of(pid):
    """A gunicorn master's workers: its children but the replication supervisor."""
    found = set()
    for child in children(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"replication.supervisor" not in command:
            found.add(child)
    return found


class Gunicorn:
    """One gunicorn on `database`: start it, talk to it, stop it or kill it outright.

    `app` is what it serves (bench/ serves its reference wallet too), `options` more gunicorn
    arguments; `access_log=False` logs no line per request (the benchmark's figures)."""

    def __init__(self, database, name="wallet", workers=2, currency_decimals="USD=2", log_dir=None,
                 app="app:create_app()", options=(), access_log=True, **env):
        self.database = str(database)  # a PostgreSQL URL or a SQLite file path
        self.workers_wanted = workers
        self.app, self.options = app, list(options)
        log_dir = Path(log_dir or Path(self.database).parent)
        self.error_log = log_dir / f"{name}-gunicorn.log"
        self.access_log = log_dir / f"{name}-access.log" if access_log else None
        self.env = {key: value for key, value in os.environ.items()
                    if key not in app_module.ENVIRONMENT + ("GUNICORN_CMD_ARGS", "WEB_CONCURRENCY", "PORT")}
        self.env.update(store_settings(self.database), CALLBACK_TOKEN=CALLBACK_TOKEN,
                        ADMIN_TOKEN=ADMIN_TOKEN, CURRENCY_DECIMALS=currency_decimals, **env)
        self.process = None
        self.workers = set()
        self.port = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def command(self):
        command = [
            sys.executable, "-m", "gunicorn",
            "--workers", str(self.workers_wanted),
            "--bind", f"127.0.0.1:{self.port}",
            "--no-control-socket",  # not the shared ~/.gunicorn/gunicorn.ctl of other servers
        ]
        if self.access_log:
            # %(p)s is the id of the worker that served the request.
            command += ["--access-logfile", str(self.access_log), "--access-logformat", "%(p)s %(s)s %(m)s %(U)s"]
        return command + [*self.options, self.app]

    def launch(self):
        """Start gunicorn on a free port, in a process group of its own, without waiting for it."""
        self.port = free_port()
        with open(self.error_log, "ab") as log:
            self.process = subprocess.Popen(self.command(), cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log, start_new_session=True)
        return self

    def start(self):
        """Start on a free port and wait until every worker is up; fail the test with the log if not."""
        return self.launch().ready()

    def ready(self, timeout=STARTUP_SECONDS):
        """Wait until the launched server answers /healthz with every worker up (RuntimeError, with
        its log, if it exits or does not within `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log()}")
            try:
                status, _ = self.request("GET", "/healthz", timeout=2)
            except (OSError, http.client.HTTPException):
                status = None
            if status == 200:
                self.workers = workers_of(self.process.pid)
                if len(self.workers) == self.workers_wanted and self._every_worker_answered():
                    if self.access_log:
                        self.access_log.write_text("")  # count only the test's own requests
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"gunicorn did not answer /healthz within {timeout:g} s:\n{self.log()}")

    def _every_worker_answered(self):
        """Whether every worker has answered a /healthz (the master deals each new connection to
        the next worker that has loaded the app: one still loading it gets none), as far as the
        access log tells; without one, a forked worker counts."""
        if not self.access_log or not self.access_log.exists():
            return True
        answered = {line.split()[0] for line in self.access_log.read_text().splitlines()
                    if line.split()[3:4] == ["/healthz"]}
        return {f"<{pid}>" for pid in self.workers} <= answered

    def refused(self):
        """Start it expecting gunicorn to refuse: its exit status and log (fails the test if it serves)."""
        self.launch()
        try:
            self.process.wait(timeout=STARTUP_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"gunicorn started instead of refusing:\n{self.log()}")
        return self.process.returncode, self.log()

    def stop(self):
        """Shut down gracefully (SIGTERM), killing it if it does not go within 10 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self):
        """SIGKILL the master and every worker at once, mid-whatever they were doing."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def log(self):
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""

    # --- requests ------------------------------------------------------------------------

    def request(self, method, path, payload=None, headers=None, timeout=REQUEST_TIMEOUT):
        """One request on a fresh connection: (status, JSON body, or the raw text if not JSON)."""
        headers = dict(headers or {})
        data = None
        if payload is not None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw.decode(errors="replace")

    def raw(self, data, close="write", timeout=REQUEST_TIMEOUT):
        """Send bytes as they are on a fresh connection; return the answer as a RawAnswer.

        `close` is what the client does after sending: "write" half-closes (the server sees
        the end of the request but can still answer), "all" hangs up without reading (a
        client gone: the answer is None), None sends nothing more and waits for the answer.
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            try:
                sock.sendall(data)
                if close == "all":
                    return None
                if close == "write":
                    sock.shutdown(socket.SHUT_WR)
            except OSError as error:
                # A server refusing a body before its end answers and closes without reading
                # the rest; the answer is still there to read.
                if error.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                    raise
            received = bytearray()
            try:
                while chunk := sock.recv(65536):
                    received += chunk
            except ConnectionResetError:  # ...and its close resets the connection after the answer
                pass
        return RawAnswer(bytes(received))

    def callback(self, payload):
        return self.request("POST", f"/callback/{CALLBACK_TOKEN}", payload)

    def admin(self, method, path, payload=None):
        return self.request(method, path, payload, ADMIN)

    def deposit(self, player, amount, reference=None, currency="USD"):
        status, answer = self.admin("POST", f"/api/players/{player}/deposits", {
            "currency": currency, "amount": amount, "reference": reference or f"fund-{player}"})
        assert status == 201, (status, answer)
        return answer

    def balance(self, player, currency="USD"):
        status, answer = self.admin("GET", f"/api/players/{player}/balances/{currency}")
        assert status == 200, (status, answer)
        return decimal.Decimal(answer["balance"])

    # --- health ----------------------------------------------------------------------------

    def serving_pids(self):
        """Ids of the workers that answered callbacks since start(), from the access log."""
        return {line.split()[0] for line in self.access_log.read_text().splitlines()
                if line.split()[3:4] and line.split()[3].startswith("/callback")}

    def assert_healthy(self):
        """The master and every worker it started are alive, and nothing crashed."""
        assert self.process.poll() is None, f"gunicorn exited:\n{self.log()}"
        assert workers_of(self.process.pid) == self.workers, (
            f"a worker died or was replaced (started {sorted(self.workers)}, "
            f"now {sorted(workers_of(self.process.pid))}):\n{self.log()}"
        )
        log = self.log()
        for marker in ("Traceback", "[ERROR]", "[CRITICAL]", "WORKER TIMEOUT"):
            assert marker not in log, f"gunicorn logged {marker!r}:\n{log}"


class Instances:
    """Several independent gunicorn masters on one database, as on separate machines: each
    request goes to the next instance in turn. Reads like one Gunicorn to the tests."""

    def __init__(self, servers):
        self.servers = servers
        self.database = servers[0].database
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def _next(self):
        with self._lock:
            return self.servers[next(self._turn) % len(self.servers)]

    def request(self, *args, **kwargs):
        return self._next().request(*args, **kwargs)

    def callback(self, payload):
        return self._next().callback(payload)

    def admin(self, method, path, payload=None):
        return self._next().admin(method, path, payload)

    def deposit(self, *args, **kwargs):
        return self._next().deposit(*args, **kwargs)

    def balance(self, *args, **kwargs):
        return self._next().balance(*args, **kwargs)

    def serving_pids(self):
        return set().union(*(server.serving_pids() for server in self.servers))

    def assert_healthy(self):
        for server in self.servers:
            server.assert_healthy()


# --- provider traffic until the server stops answering (the crash and restore drills) --------

BETS = ["0.50", "1", "2.37", "0.35"]
PAYOUTS = ["2", "1.5", "0.5", "3.3"]  # x 0.35 and 2.37 land on half-cents: half-to-even


class Game:
    """One game a provider client plays: its start, then its finish, each answer kept."""

    def __init__(self, game_id, player, rng):
        self.id, self.player = game_id, player
        self.bet = decimal.Decimal(rng.choice(BETS))
        self.status = rng.choice(["win", "lose"])
        self.payout = decimal.Decimal(rng.choice(PAYOUTS)) if self.status == "win" else decimal.Decimal(0)
        self.answers = {}  # "start"/"finish" -> (status, body), or None when sent but unanswered
        self.answered_at = {}  # "start"/"finish" -> the time its answer arrived

    def payload(self, kind):
        changes = {"game.id": self.id, "game.bet": float(self.bet), "session.playerId": self.player}
        if kind == "finish":
            changes.update({"game.status": self.status, "game.payout": float(self.payout)})
        return body(START if kind == "start" else FINISH, **changes)

    def bet_minor(self):
        return int(self.bet * 100)

    def credit_minor(self):
        return int((self.bet * self.payout).quantize(decimal.Decimal("0.01"), decimal.ROUND_HALF_EVEN) * 100)


class Progress:
    """Counts the answers provider clients get, so that a drill waits for enough traffic
    instead of sleeping for a time a slow machine may not fill."""

    def __init__(self):
        self._count, self.answered = itertools.count(1), 0

    def tick(self):
        self.answered = next(self._count)  # next() on a count is atomic: clients share it

    def wait(self, more, timeout=60):
        """Wait until `more` answers came after this call (at most `timeout` seconds)."""
        target, deadline = self.answered + more, time.monotonic() + timeout
        while self.answered < target:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.answered} answers, {target} awaited, after {timeout} s")
            time.sleep(0.01)


def play(server, client, prefix="c", progress=None):
    """One provider connection: games one after another until the server stops answering
    (its first request without an answer ends it); returns the games. `progress` (a Progress)
    counts the answers."""
    rng = random.Random(client)
    games = []
    for n in range(10**6):
        game = Game(f"{prefix}{client}-g{n}", f"player-{client % 4}", rng)
        games.append(game)
        for kind in ("start", "finish"):
            try:
                game.answers[kind] = server.callback(game.payload(kind))
            except (OSError, http.client.HTTPException):
                game.answers[kind] = None  # sent (or attempted) but never answered
                return games
            game.answered_at[kind] = time.time()
            if progress is not None:
                progress.tick()
    return games
