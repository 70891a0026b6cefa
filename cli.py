"""`flask --app app wallet ...`: the operator API's deposits, withdrawals and balances from a shell."""

import json
import uuid

import click
from flask.cli import AppGroup
from marshmallow import ValidationError

import schemas
import wallet
from db import get_db
from errors import ApiError

wallet_cli = AppGroup("wallet", help="Deposit, withdraw and read balances.")


def _echo(data):
    click.echo(json.dumps(data, indent=2))


def _move(kind, player, currency, amount, reference):
    try:
        schemas.player_schema.load({"player_id": player})
        body = schemas.movement_schema.load(
            {"currency": currency, "amount": amount, "reference": reference or f"cli-{uuid.uuid4().hex}"}
        )
        status, view = wallet.move_funds(get_db(), kind, player, body["currency"], body["amount"], body["reference"])
    except ValidationError as exc:
        raise click.ClickException(f"invalid input: {json.dumps(exc.messages)}") from None
    except ApiError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from None
    if status == 200:
        click.echo(f"reference {body['reference']!r} was already applied; nothing moved", err=True)
    _echo(view)


def _movement_command(name, kind, help_text):
    @wallet_cli.command(name, help=help_text)
    @click.argument("player")
    @click.argument("currency")
    @click.argument("amount")
    @click.option("--reference", help="Idempotency key; a repeat with the same one moves nothing.")
    def command(player, currency, amount, reference):
        _move(kind, player, currency, amount, reference)

    return command


deposit = _movement_command("deposit", "deposit", "Credit AMOUNT of CURRENCY to PLAYER's wallet.")
withdraw = _movement_command(
    "withdraw", "withdrawal", "Debit AMOUNT of CURRENCY from PLAYER's wallet (refused above the balance)."
)


@wallet_cli.command("balance")
@click.argument("player")
@click.argument("currency", required=False)
def balance(player, currency):
    """Show PLAYER's wallet in CURRENCY, or in every currency."""
    if currency is None:
        _echo({"player_id": player, "balances": wallet.player_wallets(get_db(), player)})
        return
    view = wallet.wallet_view(get_db(), player, currency)
    if view is None:
        raise click.ClickException(f"player {player!r} has no {currency} wallet")
    _echo(view)
