"""Who may call: the callback token in the URL, the IP allow-list, the operator's bearer token."""

import pytest

import db

from harness.samples import ADMIN_TOKEN, CALLBACK_TOKEN, START, body
from tests.support import Wallet


@pytest.mark.parametrize(
    "token",
    ["wrong", CALLBACK_TOKEN[:-1], CALLBACK_TOKEN.upper(), CALLBACK_TOKEN + "x", "é" * 8],
    ids=["wrong", "truncated", "case-changed", "longer", "non-ascii"],
)
def test_wrong_callback_token_is_refused_and_moves_nothing(wallet, token):
    wallet.deposit("10.00")
    before = wallet.books()
    response = wallet.start(request={"token": token})
    assert response.status_code == 403 and response.json["error"] == "forbidden"
    assert wallet.books() == before
    assert wallet.audit() == []  # unauthorised calls are not kept


def test_missing_callback_token_is_refused(wallet):
    wallet.deposit("10.00")
    response = wallet.client.post("/callback", json=body(START))
    assert response.status_code == 403
    assert wallet.balance() == "10.00"


def test_without_callback_token_the_endpoint_is_plain_callback_and_a_warning_is_logged(make_app, caplog):
    with caplog.at_level("WARNING"):
        app = make_app(CALLBACK_TOKEN=None)
    assert any("CALLBACK_TOKEN" in record.getMessage() for record in caplog.records)
    wallet = Wallet(app.test_client(), app)
    wallet.deposit("10.00")
    assert wallet.client.post("/callback", json=body(START)).json == {"result": True}
    assert wallet.client.post("/callback/anything", json=body(START)).status_code == 404
    assert wallet.balance() == "9.00"


def test_no_warning_when_the_token_is_set(make_app, caplog):
    with caplog.at_level("WARNING"):
        make_app()
    assert not any("CALLBACK_TOKEN" in record.getMessage() for record in caplog.records)


def allowed_wallet(make_app, **config):
    app = make_app(CALLBACK_ALLOWED_IPS="203.0.113.0/24, 2001:db8::1", **config)
    wallet = Wallet(app.test_client(), app)
    wallet.deposit("10.00")
    return wallet


@pytest.mark.parametrize("address, allowed", [
    ("203.0.113.7", True), ("2001:db8::1", True), ("198.51.100.1", False), ("127.0.0.1", False),
])
def test_allowed_ips_refuse_other_clients(make_app, address, allowed):
    wallet = allowed_wallet(make_app)
    response = wallet.start(request={"environ_base": {"REMOTE_ADDR": address}})
    assert response.status_code == (200 if allowed else 403)
    assert wallet.balance() == ("9.00" if allowed else "10.00")


def test_forwarded_for_is_ignored_when_no_proxy_is_trusted(make_app):
    wallet = allowed_wallet(make_app)
    response = wallet.start(request={"environ_base": {"REMOTE_ADDR": "198.51.100.1"},
                                     "headers": {"X-Forwarded-For": "203.0.113.7"}})
    assert response.status_code == 403
    assert wallet.balance() == "10.00"


def test_forwarded_for_is_believed_as_far_as_trusted_proxies(make_app):
    wallet = allowed_wallet(make_app, TRUSTED_PROXIES="1")
    proxy = {"REMOTE_ADDR": "10.0.0.2"}
    # The one trusted proxy appended the real client: allowed.
    allowed = {"environ_base": proxy, "headers": {"X-Forwarded-For": "203.0.113.7"}}
    assert wallet.start(game_id="a", request=allowed).status_code == 200
    # A client spoofing an allowed address in front of its own: the proxy's entry wins.
    spoofed = wallet.start(game_id="b", request={
        "environ_base": proxy, "headers": {"X-Forwarded-For": "203.0.113.7, 198.51.100.1"}})
    assert spoofed.status_code == 403
    assert wallet.balance() == "9.00"


def test_operator_api_is_disabled_without_admin_token(make_app):
    app = make_app(ADMIN_TOKEN=None)
    response = app.test_client().get("/api/players/p/balances", headers={"Authorization": "Bearer x"})
    assert response.status_code == 403 and "ADMIN_TOKEN" in response.json["message"]


@pytest.mark.parametrize(
    "header",
    [None, "", f"Bearer {ADMIN_TOKEN[:-1]}", f"Bearer {ADMIN_TOKEN.upper()}", f"Basic {ADMIN_TOKEN}",
     ADMIN_TOKEN, "Bearer ", f"Bearer {ADMIN_TOKEN}x"],
    ids=["missing", "empty", "truncated", "case-changed", "basic", "no scheme", "blank", "longer"],
)
def test_wrong_admin_token_is_refused_and_moves_nothing(wallet, header):
    headers = {} if header is None else {"Authorization": header}
    response = wallet.client.post("/api/players/p/deposits", headers=headers,
                                  json={"currency": "USD", "amount": "5", "reference": "r"})
    assert response.status_code == 401 and response.json["error"] == "unauthorized"
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert wallet.books()["wallets"] == {}


@pytest.mark.parametrize("trusted, remote, forwarded, allowed", [
    # No trusted proxy: no header may stand in for the socket's address.
    ("0", "198.51.100.1", {"X-Forwarded-For": "198.51.100.9, 203.0.113.7"}, False),
    ("0", "198.51.100.1", {"X-Real-IP": "203.0.113.7", "Forwarded": "for=203.0.113.7"}, False),
    # One trusted proxy: without the header, the proxy's own address is what is checked...
    ("1", "10.0.0.2", {}, False),
    ("1", "203.0.113.7", {}, True),
    # ...with it, the last hop replaces the socket's address, allowed or not.
    ("1", "203.0.113.7", {"X-Forwarded-For": "198.51.100.1"}, False),
    ("1", "10.0.0.2", {"X-Forwarded-For": "2001:db8::1"}, True),
    ("1", "10.0.0.2", {"X-Forwarded-For": "unknown"}, False),
    ("1", "10.0.0.2", {"X-Forwarded-For": "203.0.113.7:443"}, False),
    ("1", "10.0.0.2", {"X-Real-IP": "203.0.113.7", "Forwarded": "for=203.0.113.7"}, False),
    # Two trusted proxies: the second hop from the right; one hop is too few to believe.
    ("2", "10.0.0.2", {"X-Forwarded-For": "203.0.113.7, 10.0.0.3"}, True),
    ("2", "10.0.0.2", {"X-Forwarded-For": "198.51.100.1, 203.0.113.7"}, False),
    ("2", "10.0.0.2", {"X-Forwarded-For": "203.0.113.7"}, False),
])
def test_which_address_the_allow_list_judges(make_app, trusted, remote, forwarded, allowed):
    wallet = allowed_wallet(make_app, TRUSTED_PROXIES=trusted)
    before = wallet.books()
    response = wallet.start(request={"environ_base": {"REMOTE_ADDR": remote}, "headers": forwarded})
    if allowed:
        assert (response.status_code, response.json) == (200, {"result": True})
        assert wallet.balance() == "9.00"
    else:
        assert (response.status_code, response.json["error"]) == (403, "forbidden")
        assert wallet.books() == before


def test_an_allowed_address_still_needs_the_token(make_app):
    wallet = allowed_wallet(make_app)
    response = wallet.start(request={"environ_base": {"REMOTE_ADDR": "203.0.113.7"}, "token": "wrong"})
    assert response.status_code == 403
    assert wallet.balance() == "10.00"


@pytest.mark.parametrize("url", [
    f"/callback?token={CALLBACK_TOKEN}", f"/callback/{CALLBACK_TOKEN}/", f"/callback/{CALLBACK_TOKEN}/x",
    f"/callback/%20{CALLBACK_TOKEN}", f"/callback/{CALLBACK_TOKEN}%00", f"/CALLBACK/{CALLBACK_TOKEN}",
], ids=["query-string", "trailing-slash", "sub-path", "leading-space", "trailing-nul", "path-case"])
def test_the_token_counts_only_as_the_exact_path_segment(wallet, url):
    wallet.deposit("10.00")
    before = wallet.books()
    response = wallet.client.post(url, json=body(START))
    assert response.status_code in (403, 404) and response.json["error"] in ("forbidden", "not_found")
    assert wallet.books() == before
    assert wallet.audit() == []


@pytest.mark.parametrize(
    "header", [None, f"Bearer {ADMIN_TOKEN[:-1]}", f"Bearer {CALLBACK_TOKEN}", f"Basic {ADMIN_TOKEN}"],
    ids=["missing", "truncated", "callback-token", "basic"],
)
def test_every_operator_endpoint_needs_the_admin_token(wallet, header):
    wallet.deposit("10.00")
    assert wallet.start().json == {"result": True}  # an open game a refund could return
    before = wallet.books()
    headers = {} if header is None else {"Authorization": header}
    routes = [rule for rule in wallet.app.url_map.iter_rules() if rule.endpoint.startswith("api.")]
    assert len(routes) >= 10
    for rule in routes:
        url = rule.build({name: "player-42" if "player" in name else ("USD" if name == "currency" else "g-1")
                          for name in rule.arguments})[1]
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            response = wallet.client.open(url, method=method, headers=headers,
                                          json={"currency": "USD", "amount": "1", "reference": "w"})
            assert (response.status_code, response.json["error"]) == (401, "unauthorized"), (method, url)
            assert response.headers["WWW-Authenticate"] == "Bearer"
    assert wallet.books() == before

# --- rotating the callback token: CALLBACK_TOKEN=old,new ---------------------------------------

OLD, NEW = "old-2b7f-token", "new-91ce-token"


def test_while_rotating_both_tokens_are_accepted_and_the_log_says_which_by_position(make_app, capsys):
    app = make_app(CALLBACK_TOKEN=f"{OLD}, {NEW}")
    wallet = Wallet(app.test_client(), app)
    wallet.deposit("10.00")
    capsys.readouterr()
    assert wallet.start(game_id="a", request={"token": OLD}).json == {"result": True}
    assert wallet.start(game_id="b", request={"token": NEW}).json == {"result": True}
    for wrong in (f"{OLD},{NEW}", OLD + NEW, CALLBACK_TOKEN, "", ","):
        assert wallet.start(game_id="c", request={"token": wrong}).status_code in (403, 404)
    assert wallet.balance() == "8.00"
    lines = [line.split("INFO in callbacks: ")[1] for line in capsys.readouterr().err.splitlines()]
    assert [line.split()[1] for line in lines] == ["token=1", "token=2"] + ["token=-"] * 4, lines


@pytest.mark.parametrize("setting", [f"{OLD},{NEW},third", f"{OLD},{NEW},{OLD}"])
def test_more_than_two_tokens_refuse_to_start(make_app, setting):
    with pytest.raises(db.StartupError, match="two"):
        make_app(CALLBACK_TOKEN=setting)


def test_the_apps_own_log_lines_never_contain_a_callback_token(make_app, caplog, capsys):
    """The token is a secret in the URL: whatever happens to a callback, the app logs its
    position only. (Access logs and routers log the path; see the README.)"""
    app = make_app(CALLBACK_TOKEN=f"{OLD},{NEW}")
    wallet = Wallet(app.test_client(), app)
    with caplog.at_level("DEBUG"):
        wallet.deposit("10.00")
        for position, token in enumerate((OLD, NEW), 1):
            wallet.start(game_id=f"g-{position}", request={"token": token})  # accepted
            wallet.start(game_id=f"g-{position}", request={"token": token})  # duplicate
            wallet.finish(game_id="none", request={"token": token})  # conflict
            wallet.callback(b"{", token=token)  # invalid
            wallet.start(request={"token": token + "x"})  # refused
        wallet.client.post(f"/callback/{OLD}/{NEW}", json=body(START))  # no such route
    logged = "\n".join(f"{record.name} {record.getMessage()}" for record in caplog.records)
    logged += capsys.readouterr().err  # the callbacks' lines, and anything else written there
    assert "callback token=1" in logged and "callback token=2" in logged
    assert OLD not in logged and NEW not in logged


@pytest.mark.parametrize("setting", ["ADMIN_TOKEN", "CALLBACK_TOKEN", "METRICS_TOKEN"])
@pytest.mark.parametrize("token", ["token\u200b", "tab\there", "t\u00f6k"])
def test_a_token_that_cannot_be_sent_as_it_is_refuses_to_start(make_app, setting, token):
    with pytest.raises(db.StartupError, match=f"{setting} must be printable ASCII"):
        make_app(**{setting: token})


@pytest.mark.parametrize("setting", ["ADMIN_TOKEN", "CALLBACK_TOKEN"])
def test_a_non_ascii_token_refuses_to_start_in_one_line(setting, tmp_path):
    from harness.live import flask_cli

    done = flask_cli("wallet", "balance", "player-42", **{setting: "tök", "DATABASE_PATH": str(tmp_path / "w.db")})
    assert done.returncode == 1, done
    assert done.stderr.splitlines() == [f"Error: invalid configuration: {setting} must be printable ASCII "
                                        "(letters, digits and punctuation): clients send other characters in "
                                        "different encodings, so such a token cannot be sent reliably"], done.stderr
    assert not (tmp_path / "w.db").exists()


def test_a_printable_ascii_admin_token_with_punctuation_is_sent_and_accepted(make_app):
    token = "a-Z_0.9~!$&'()*+,;=:@%/?"
    app = make_app(ADMIN_TOKEN=token)
    response = app.test_client().get("/api/players/p/balances", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
