"""The provider's callback endpoint: authenticate, parse exactly, validate, settle, audit."""

import hmac
import ipaddress
import json
import logging
import re
import sys
import time

from flask import Blueprint, Response, current_app, g, request

import db
import schemas
import wallet
from db import DatabaseUnavailable, get_db
from money.refusals import ApiError
from money.units import now_ms
from web import bodies, metrics

bp = Blueprint("callbacks", __name__)


def parse_networks(text):
    """Parse CALLBACK_ALLOWED_IPS (addresses or CIDR ranges, comma-separated)."""
    return [ipaddress.ip_network(item.strip(), strict=False) for item in text.split(",") if item.strip()]


def parse_tokens(text):
    """Parse CALLBACK_TOKEN: one token, or two separated by a comma while rotating (old,new)."""
    tokens = tuple(item.strip() for item in (text or "").split(",") if item.strip())
    if len(tokens) > 2:
        raise ValueError("CALLBACK_TOKEN holds one token, or two (old,new) while rotating")
    return tokens


def _authorise(token):
    """Refuse (403/404) a caller outside CALLBACK_ALLOWED_IPS or without a right token.

    Every configured token is compared, each in constant time; g.token says which one was used
    by position (1 or 2, never the token itself), for the log line.
    """
    allowed = current_app.config["CALLBACK_NETWORKS"]
    if allowed:
        try:
            client = ipaddress.ip_address(request.remote_addr or "")
        except ValueError:
            client = None
        if client is None or not any(client in network for network in allowed):
            raise ApiError(403, "forbidden", "This address may not send callbacks.")
    expected = current_app.config["CALLBACK_TOKENS"]
    if not expected:
        if token is not None:
            raise ApiError(404, "not_found", "No CALLBACK_TOKEN is set: the callback URL is /callback.")
        return
    given = (token or "").encode()
    matches = [hmac.compare_digest(given, each.encode()) for each in expected]
    if token is None or not any(matches):
        raise ApiError(403, "forbidden", "Missing or wrong callback token in the callback URL.")
    g.token = matches.index(True) + 1


@bp.post("/callback", defaults={"token": None})
@bp.post("/callback/<token>")
def callback(token):
    """Answer one provider callback; every answered callback is kept in the audit table."""
    state = g._get_current_object()  # the request's g, read and written here without its proxy
    state.started = started = time.perf_counter()
    _authorise(token)
    state.audit = audit = {"received_at": now_ms(), "started": started}
    audit["body"] = raw = bodies.read_body()  # a body refused (413, 400) is audited without it
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "Send the callback as Content-Type: application/json.")
    payload = schemas.parse_json(raw)
    if isinstance(payload, dict):
        audit.update(_labels(payload))
    cb = schemas.load_callback(payload)
    result = wallet.apply_callback(get_db(), cb, audit)
    audit["outcome"] = result.outcome
    if result.outcome == "accepted":
        state.moved = (cb["session"]["currency"], result.moved)
    # The answer's text is the one the audit row kept (not Flask's JSON provider again).
    return Response(result.text + "\n", result.status, mimetype="application/json")


def _labels(payload):
    """Pick type, game id and player from a body for the audit and the log, whatever its shape."""
    session = payload.get("session") if isinstance(payload.get("session"), dict) else {}
    game = payload.get("game") if isinstance(payload.get("game"), dict) else {}
    labels = {"type": payload.get("type"), "game_id": game.get("id"), "player_id": session.get("playerId")}
    labels = {key: _label(value) for key, value in labels.items()}
    if game.get("id") is not None and not isinstance(game["id"], str):
        labels["game_id"] = schemas.game_id_or_none(game["id"]) or labels["game_id"]
    return labels


def _label(value):
    """A label as stored and logged, taken before validation: a well-formed identifier as it
    is; anything else (a number, an object, text holding a NUL, a lone surrogate, a control or
    another non-printing character) as JSON with every non-ASCII character escaped, so every
    engine can store it, no log line breaks on it, and what was sent can still be read."""
    if value is None:
        return None
    if isinstance(value, str) and schemas.printable(value) and schemas.storable(value):
        return value[:255]
    return json.dumps(value, default=str)[:255]


@bp.after_request
def audit_and_log(response):
    """Keep every refused callback in the audit (settled ones were kept with their movement);
    count and log every callback, once, whatever its outcome."""
    state = g._get_current_object()
    audit = state.get("audit")
    if audit is not None and "outcome" not in audit:
        answer = response.get_json(silent=True) or {}
        outcome = "invalid" if response.status_code < 500 else "error"
        audit["outcome"] = outcome
        if answer.get("error") == "database_unavailable":
            audit["outcome"] = "unavailable"  # nothing can be written; the provider retries
        else:
            result = wallet.Outcome(response.status_code, {}, outcome, answer.get("message") or response.status)
            try:
                text = response.get_data(as_text=True).removesuffix("\n")  # kept as a settled answer is
                wallet.record_callback(get_db(), audit, result, text)
            except DatabaseUnavailable as exc:  # went away between the answer and its audit
                db.unavailable(exc)
    started = state.get("started")
    if started is not None:
        audit = audit or {}
        outcome = audit.get("outcome", "unauthorised")
        seconds = time.perf_counter() - started
        metrics.count_callback(audit.get("type"), outcome, seconds, state.get("moved"))
        if current_app.logger.isEnabledFor(logging.INFO):
            _log_line("callback token=%s type=%s game=%s player=%s outcome=%s status=%s ms=%.1f" % (
                state.get("token", "-"), _logged(audit.get("type")), _logged(audit.get("game_id")),
                _logged(audit.get("player_id")), outcome, response.status_code, seconds * 1000))
    return response


# A label a key=value parser would split or misread: empty, or holding a space, '=', '"', a
# backslash or a character that does not print (see _logged).
_NEEDS_QUOTES = re.compile(f'[\\s="\\\\{schemas.NON_PRINTING}]|^$')


def _logged(label):
    """A label as written in the log line: as it is, or quoted as a JSON string when it holds
    what would let it forge or split fields (`player=ok" outcome=accepted`), so that each line
    parses to exactly the fields it was written with."""
    if label is None or not _NEEDS_QUOTES.search(label):
        return label
    return json.dumps(label)


def _log_line(message):
    """Write the callback's INFO line as Flask's default log handler would: the same text, to
    the same stream (the server's error log, WSGI's wsgi.errors), gated by LOG_LEVEL.

    Written here rather than through `logging`: building each line through a LogRecord (its
    caller's frame, thread and process names), the handler's lock and Flask's stream proxy
    cost a worker 0.07 ms of CPU per callback under load, measured (issue 13), more than
    anything else the line needs. The app's other messages go through app.logger as before.
    """
    now = time.time()
    moment = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    stream = request.environ.get("wsgi.errors") or sys.stderr
    stream.write(f"[{moment},{int(now * 1000) % 1000:03d}] INFO in callbacks: {message}\n")
    stream.flush()
