"""A win the wallet cannot take (it would pass the largest balance, 10^18 minor units): the finish
is taken (200 {}) and the game held `unpaid`, findable, and paid by the operator with ledger rows."""

import json


def btc_whale(wallet, units="9999999999"):
    """A BTC wallet (8 decimals) just under its largest balance, 10^10 BTC, with a 1 BTC bet open."""
    assert wallet.deposit(units, currency="BTC").status_code == 201
    assert wallet.start(game_id="big", currency="BTC", bet=1).json == {"result": True}


def reconciled(wallet):
    report = wallet.client.get("/api/reconcile", headers=wallet.admin).json
    assert report["ok"], report["discrepancies"]
    return report


def test_a_win_past_the_largest_balance_is_taken_held_unpaid_and_findable(wallet, runner):
    btc_whale(wallet)
    before = wallet.books()
    response = wallet.finish(game_id="big", currency="BTC", bet=1, payout=100)
    assert (response.status_code, response.json) == (200, {})  # the provider stops retrying
    assert wallet.books()["wallets"] == before["wallets"]  # nothing credited
    row = wallet.audit()[-1]
    assert row["outcome"] == "held" and "held unpaid" in row["reason"] and "100.00000000 BTC" in row["reason"]
    assert wallet.finish(game_id="big", currency="BTC", bet=1, payout=100).json == {}  # a retry: a duplicate
    assert wallet.audit()[-1]["outcome"] == "duplicate"
    assert wallet.finish(game_id="big", currency="BTC", bet=1, payout=99).status_code == 409
    assert wallet.books()["wallets"] == before["wallets"]

    listed = wallet.client.get("/api/games?status=unpaid", headers=wallet.admin).json["games"]
    assert [(game["game_id"], game["status"], game["payout"]) for game in listed] == [("big", "unpaid", "100")]
    cli = runner.invoke(args=["wallet", "games", "--status", "unpaid", "--json"])
    assert [game["game_id"] for game in json.loads(cli.output)["games"]] == ["big"]
    held = wallet.client.get("/api/callbacks?outcome=held", headers=wallet.admin).json["callbacks"]
    assert [row["game_id"] for row in held] == ["big"]
    refund = wallet.client.post("/api/games/big/refund", headers=wallet.admin)
    assert refund.status_code == 409 and "settle it" in refund.json["message"]  # a refund would drop the win
    assert reconciled(wallet)["games"] == {"unpaid": 1}


def test_the_operator_settles_an_unpaid_win_with_ledger_rows_as_room_allows(wallet, runner):
    btc_whale(wallet)
    wallet.finish(game_id="big", currency="BTC", bet=1, payout=100)
    # The wallet holds 9,999,999,998 BTC: 2 BTC of room. The settlement pays those 2.
    first = wallet.client.post("/api/games/big/settle", headers=wallet.admin)
    assert first.status_code == 200, first.json
    assert (first.json["paid"], first.json["owed"], first.json["game"]["status"]) == ("2.00000000", "98.00000000", "unpaid")
    assert first.json["wallet"]["balance"] == "10000000000.00000000"
    reconciled(wallet)
    full = wallet.client.post("/api/games/big/settle", headers=wallet.admin)
    assert full.status_code == 409 and full.json["error"] == "balance_limit" and "withdraw" in full.json["message"]
    assert wallet.withdraw("1000", currency="BTC", reference="cash-out").status_code == 201  # paid out to the player
    done = runner.invoke(args=["wallet", "settle", "big"])
    assert done.exit_code == 0, done.output
    answer = json.loads(done.output)
    assert (answer["paid"], answer["owed"], answer["game"]["status"]) == ("98.00000000", "0.00000000", "won")
    assert answer["wallet"]["balance"] == "9999999098.00000000"
    again = wallet.client.post("/api/games/big/settle", headers=wallet.admin)
    assert (again.status_code, again.json["paid"], again.json["owed"]) == (200, "0.00000000", "0.00000000")
    assert wallet.finish(game_id="big", currency="BTC", bet=1, payout=100).json == {}  # still a duplicate
    rows = [(kind, amount) for _, amount, kind, game_id, _ in wallet.books()["ledger"] if game_id == "big"]
    assert rows == [("bet", -10**8), ("payout", 2 * 10**8), ("payout", 98 * 10**8)]
    assert reconciled(wallet)["games"] == {"won": 1}


def test_a_win_larger_than_any_balance_is_held_and_paid_in_parts(wallet):
    wallet.deposit("9000000000", currency="BTC")
    assert wallet.start(currency="BTC", bet=1000).json == {"result": True}
    response = wallet.finish(currency="BTC", bet=1000, payout=10**11)  # 10^14 BTC: past any balance
    assert (response.status_code, response.json) == (200, {})
    assert wallet.audit()[-1]["outcome"] == "held"
    paid = wallet.client.post("/api/games/g-1/settle", headers=wallet.admin).json
    assert paid["paid"] == "1000001000.00000000" and paid["game"]["status"] == "unpaid"
    assert paid["wallet"]["balance"] == "10000000000.00000000"
    reconciled(wallet)


def test_only_a_won_game_is_settled(wallet):
    wallet.deposit("10.00")
    wallet.start(game_id="open", bet=1)
    wallet.start(game_id="lost", bet=1)
    wallet.finish(game_id="lost", bet=1, status="lose", payout=0)
    wallet.start(game_id="won", bet=1)
    wallet.finish(game_id="won", bet=1, payout=2)
    before = wallet.books()
    for game_id in ("open", "lost"):
        response = wallet.client.post(f"/api/games/{game_id}/settle", headers=wallet.admin)
        assert response.status_code == 409 and response.json["error"] == "conflict", game_id
    assert wallet.client.post("/api/games/nope/settle", headers=wallet.admin).status_code == 404
    won = wallet.client.post("/api/games/won/settle", headers=wallet.admin)
    assert (won.status_code, won.json["paid"], won.json["owed"]) == (200, "0.00", "0.00")
    assert wallet.books() == before
