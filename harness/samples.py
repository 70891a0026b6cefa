"""Sample traffic for trying the service: the tokens a local run is given, callbacks shaped like
the provider's, and where a run keeps its books."""

import copy

import store

CALLBACK_TOKEN = "cb-9f2c4e1a-secret"
ADMIN_TOKEN = "admin-7d1e-secret"

START = {
    "type": "start",
    "session": {"id": "9f2c4e1a", "playerId": "player-42", "gameId": "Mines", "currency": "USD"},
    "game": {"id": "g-1", "status": "in_progress", "payout": 0, "profit": 0, "bet": 1, "round": 1},
    "data": {"bet": 1, "allBetAmount": 1},
    "roundData": {},
    "time": 1663249396,
}
FINISH = {
    "type": "finish",
    "session": {"id": "9f2c4e1a", "playerId": "player-42", "gameId": "Mines", "currency": "USD"},
    "game": {"id": "g-1", "status": "win", "payout": 2.5, "profit": 1.5, "bet": 1, "round": 1},
    "data": {"balanceUpdateDelay": 3500},
    "time": 1663249721934,
}
DELETE = object()  # body(..., **{"path": DELETE}) removes the key


def body(template, **changes):
    """A copy of a callback template with dotted-path changes: body(START, **{"game.bet": 5})."""
    data = copy.deepcopy(template)
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        target = data
        for key in parents:
            target = target[key]
        if value is DELETE:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return data


def store_settings(target):
    """The configuration that puts an app's books at `target` (a URL or a file path)."""
    return {"DATABASE_URL": target} if store.is_database_url(target) else {"DATABASE_PATH": target}
