"""The worker arrangement (gunicorn.conf.py, serving.py) through a real gunicorn of 2 workers, on
both engines: kept-alive connections are spread over the workers, and a request that waits
on the database holds up no other request of its worker.

Which worker served a request is read from gunicorn's access log (harness/live.py logs the
worker's pid first). Nothing here is timed: each test checks what happened before what.
"""

import contextlib
import http.client
import json
import socket
import threading
import time

import pytest

from harness.live import STARTUP_SECONDS
from web import api, serving
from harness.samples import ADMIN_TOKEN, CALLBACK_TOKEN, START, body
from tests.support import ENGINES, books, module_gunicorn, store_for

CONNECTIONS = 32
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Enough settled history that a reconciliation takes a while (it reads every game): declined
# games, which need no ledger row, so the books still balance.
HISTORY_GAMES = 100_000


@pytest.fixture(scope="module", params=ENGINES)
def server(request, tmp_path_factory):
    with module_gunicorn(request, tmp_path_factory, "workers", workers=2) as running:
        running.deposit("player-42", "100.00")
        yield running


class Client:
    """One kept-alive connection, and the pid of the worker that served its last request."""

    def __init__(self, server):
        self.server = server
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)

    def send(self, method, path, payload=None, headers=None):
        data = None if payload is None else json.dumps(payload).encode()
        headers = dict(headers or {}, **({"Content-Type": "application/json"} if data else {}))
        self.conn.request(method, path, body=data, headers=headers)

    def answer(self):
        response = self.conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw), dict(response.getheaders())

    def get(self, method, path, payload=None, headers=None):
        self.send(method, path, payload, headers)
        return self.answer()

    def pid(self):
        """Send /healthz and return the pid the access log names for it (nothing else in flight)."""
        logged = len(served(self.server))
        assert self.get("GET", "/healthz")[0] == 200
        return served(self.server, logged + 1)[-1][0]

    def close(self):
        self.conn.close()


def served(server, at_least=0):
    """(pid, path) of every request served since start(), in the order they were logged; waits
    until `at_least` are (a worker writes its line just after its answer has gone)."""
    deadline = time.monotonic() + 10
    while True:
        lines = server.access_log.read_text().splitlines()
        if len(lines) >= at_least or time.monotonic() > deadline:
            return [(line.split()[0], line.split()[3]) for line in lines]
        time.sleep(0.005)


def both_workers_serving(server):
    """Connect until both workers have served: a worker is dealt connections once it is ready,
    and gunicorn starts serving as soon as one is (a slow machine may boot the other later)."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        client = Client(server)
        client.pid()
        client.close()
        if len({pid for pid, _ in served(server)}) == 2:
            return
        time.sleep(0.05)
    pytest.fail(f"one worker served every connection for {STARTUP_SECONDS} s:\n{server.log()}")


def clients_on_one_worker(server, count):
    """`count` kept-alive connections served by the same worker, and that worker's pid."""
    both_workers_serving(server)
    by_pid = {}
    for _ in range(4 * count):
        client = Client(server)
        by_pid.setdefault(client.pid(), []).append(client)
        for pid, clients in by_pid.items():
            if len(clients) == count:
                for other in (c for p, cs in by_pid.items() for c in cs if p != pid):
                    other.close()
                return clients, pid
    pytest.fail("the connections all went to different workers")


def test_kept_alive_connections_are_dealt_to_the_workers_in_turn(server):
    """32 connections opened at once, each kept alive for three callbacks: each worker serves
    half of them, and each connection stays with its worker."""
    both_workers_serving(server)
    server.access_log.write_text("")
    clients = [Client(server) for _ in range(CONNECTIONS)]
    try:
        for client in clients:  # all connected before the first request
            client.conn.connect()
        for round_ in range(3):  # one request at a time: the log's order is the clients'
            for n, client in enumerate(clients):
                game = body(START, **{"game.id": f"spread-{n}-{round_}", "game.bet": 0.01})
                assert client.get("POST", f"/callback/{CALLBACK_TOKEN}", game)[:2] == (200, {"result": True})
                served(server, round_ * CONNECTIONS + n + 1)
    finally:
        for client in clients:
            client.close()
    pids = [pid for pid, path in served(server) if path.startswith("/callback")]
    assert len(pids) == 3 * CONNECTIONS
    assert sorted(pids.count(pid) for pid in set(pids)) == [3 * CONNECTIONS // 2] * 2
    # A connection's three requests are 32 lines apart in the log, and were served by one worker.
    for n in range(CONNECTIONS):
        assert len({pids[n], pids[n + CONNECTIONS], pids[n + 2 * CONNECTIONS]}) == 1, pids


@pytest.fixture(scope="module")
def history(server):
    """HISTORY_GAMES declined games written straight into the books (one transaction)."""
    store = store_for(server.database)
    with store.transaction():
        store.executemany(
            "INSERT INTO games (game_id, status, player_id, currency, bet, started_at) VALUES (?, ?, ?, ?, ?, ?)",
            [(f"history-{n:06d}", "declined", "player-history", "USD", 100, 1_700_000_000_000 + n)
             for n in range(HISTORY_GAMES)])
    return books(server.database)


def test_a_long_reconciliation_holds_up_no_callback_of_its_worker(server, history):
    """While a reconciliation reads the whole books on one worker, starts sent to that same
    worker are answered, and so is /healthz; a second reconciliation asked of that worker
    meanwhile is refused at once (503 busy, Retry-After) rather than queued."""
    (reader, starter, second), pid = clients_on_one_worker(server, 3)
    logged = len(served(server))
    done = threading.Event()
    try:
        reader.send("GET", "/api/reconcile", headers=ADMIN)
        def answered():
            """Note when the reconciliation's first byte arrives (the socket may close first)."""
            with contextlib.suppress(OSError, AttributeError):  # closed, or its socket already dropped
                reader.conn.sock.recv(1, socket.MSG_PEEK)
                done.set()

        threading.Thread(target=answered, daemon=True).start()
        # The reconciliation is under way when a second one, on the same worker, is refused (the
        # second may be served first, if its thread overtook the first's: then ask again).
        for _ in range(5):
            status, answer, headers = second.get("GET", "/api/reconcile", headers=ADMIN)
            if status == 503:
                break
        assert not done.is_set(), "the reconciliation ended before the test could run beside it"
        assert (status, answer["error"]) == (503, "busy"), answer
        assert headers["Retry-After"].isdigit()
        for n in range(3):
            game = body(START, **{"game.id": f"beside-reconcile-{n}", "game.bet": 0.01})
            assert starter.get("POST", f"/callback/{CALLBACK_TOKEN}", game)[:2] == (200, {"result": True})
            assert starter.get("GET", "/healthz")[0] == 200
        assert not done.is_set(), "the starts waited for the reconciliation"
        status, report, _ = reader.answer()
        assert status == 200 and report["ok"], report
        assert report["games"]["declined"] == HISTORY_GAMES
    finally:
        for client in (reader, starter, second):
            client.close()
    assert {p for p, _ in served(server, logged + 8)[logged:]} == {pid}  # all of it on the one worker
    server.assert_healthy()


SLOW_BODY = (f"POST /callback/{CALLBACK_TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: 400\r\n\r\n{\"type\": \"start\"").encode()


def test_clients_that_never_finish_their_body_stall_nobody(server):
    """Forty-eight connections that send a whole head announcing a body and only part of it
    hold no thread (a worker reads a request whole before a thread serves it): callbacks are
    answered as usual on both workers meanwhile."""
    slow = []
    try:
        for _ in range(48):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(SLOW_BODY)
            slow.append(sock)
        server.access_log.write_text("")
        for n in range(4):  # on fresh connections: dealt to both workers in turn
            game = body(START, **{"game.id": f"slow-body-{n}", "game.bet": 0.01})
            assert server.callback(game) == (200, {"result": True})
        assert len({pid for pid, _ in served(server)}) == 2
    finally:
        for sock in slow:
            sock.close()
    server.assert_healthy()


@pytest.mark.parametrize(("sent", "whole"), [
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", False),  # the head goes on
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", True),
    (b"\r\n\r\n", False),  # empty lines before a request line are not one
    (b"\r\nGET /healthz HTTP/1.1\r\n\r\n", True),
    (b"POST /callback HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", False),  # the body goes on
    (b"POST /callback HTTP/1.1\r\ncontent-length:5\r\n\r\nabcde", True),
    (b"POST /callback HTTP/1.1\r\nContent-Length: 999999\r\n\r\nab", True),  # refused unread
    (b"POST /callback HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", True),  # a thread reads it
    (b"POST /callback HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", True),  # waits for gunicorn
    (b"POST /callback HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", True),  # refused
    (b"GET /" + b"x" * 900_000, True),  # past any head gunicorn takes: refused at once
])
def test_a_thread_is_handed_a_request_once_it_can_be_served_without_waiting(sent, whole):
    assert serving.request_is_whole(sent, max_head=850_000) is whole


def test_large_books_are_reconciled_in_a_process_of_their_own(server):
    """Past RECONCILE_APART_ROWS ledger rows a reconciliation runs as the CLI's, apart from the
    worker (whose threads keep serving), and answers its report; the books seem that large here
    by one ledger row of a high id (moving nothing: 0.00, a deposit with its reference)."""
    store = store_for(server.database)
    wallet = store.execute("SELECT id, balance FROM wallets WHERE player_id = 'player-42'").fetchone()
    high = api.RECONCILE_APART_ROWS + 1
    with store.transaction():
        store.execute("INSERT INTO ledger (id, wallet_id, amount, balance_after, kind, reference, created_at) "
                      "VALUES (?, ?, 0, ?, 'deposit', 'seems-large', 0)", [high, wallet["id"], wallet["balance"]])
    try:
        status, report = server.admin("GET", "/api/reconcile")
        assert status == 200 and report["ok"], report
        assert "in a process of its own" in server.log()
    finally:
        with store.transaction():
            store.execute("DELETE FROM ledger WHERE id = ?", [high])
    server.assert_healthy()
