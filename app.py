"""The callback wallet: create_app() reads its configuration from the environment."""

import os
import sqlite3

from flask import Flask, jsonify
from werkzeug.middleware.proxy_fix import ProxyFix

import api
import callbacks
import cli
import db
import errors
import openapi
import replication
import simulator
import wallet

ENVIRONMENT = (
    "DATABASE_PATH",
    "CALLBACK_TOKEN",
    "CALLBACK_ALLOWED_IPS",
    "TRUSTED_PROXIES",
    "ADMIN_TOKEN",
    "CURRENCY_DECIMALS",
    "SQLITE_SYNCHRONOUS",
    "LOG_LEVEL",
    "LITESTREAM_REPLICA_URL",
)


def create_app(test_config=None):
    """Create the app: configuration, logging, database schema, routes and commands."""
    app = Flask(__name__, instance_relative_config=True)
    app.url_map.merge_slashes = False  # "//" is a JSON 404, not an HTML redirect
    app.config.from_mapping(
        DATABASE_PATH=os.path.join(app.instance_path, "wallet.db"),
        CALLBACK_TOKEN=None,
        CALLBACK_ALLOWED_IPS="",
        TRUSTED_PROXIES="0",
        ADMIN_TOKEN=None,
        CURRENCY_DECIMALS="",
        SQLITE_SYNCHRONOUS="FULL",
        LOG_LEVEL="INFO",
        LITESTREAM_REPLICA_URL=None,
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    app.config.update({key: os.environ[key] for key in ENVIRONMENT if key in os.environ})
    if test_config is not None:
        app.config.update(test_config)
    _normalise_config(app)
    _configure_logging(app)
    if warning := replication.check_app(app.config):  # raises if it would lose the replica's books
        app.logger.warning(warning)

    db.init_app(app)
    with app.app_context():
        wallet.check_currency_decimals(db.get_db())
    errors.register(app)
    app.register_blueprint(callbacks.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(openapi.bp)
    app.cli.add_command(cli.wallet_cli)
    app.cli.add_command(simulator.simulate_command)
    if app.config["TRUSTED_PROXIES"]:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=app.config["TRUSTED_PROXIES"])

    @app.get("/healthz")
    def healthz():
        """Report healthy only after a real round-trip to the database."""
        try:
            db.get_db().execute("SELECT count(*) FROM wallets WHERE id = 0").fetchone()
        except sqlite3.Error as exc:
            app.logger.error("health check failed: %s", exc)
            return jsonify({"status": "unavailable", "error": "database_unavailable",
                            **replication.health(app.config)}), 503
        # Replication failing does not make a working wallet unhealthy: still 200, said in the body.
        return jsonify({"status": "ok", **replication.health(app.config)})

    if app.config["CALLBACK_TOKEN"] is None:
        app.logger.warning(
            "CALLBACK_TOKEN is not set: anyone who can reach POST /callback can move money. "
            "Set CALLBACK_TOKEN and give the provider the URL /callback/<CALLBACK_TOKEN>."
        )
    return app


def _normalise_config(app):
    """Turn the environment's strings into checked values; refuse to start on a bad one."""
    config = app.config
    for key in ("CALLBACK_TOKEN", "ADMIN_TOKEN", "LITESTREAM_REPLICA_URL"):
        config[key] = (config[key] or "").strip() or None
    try:
        config["CURRENCY_DECIMALS"] = wallet.parse_currency_decimals(config["CURRENCY_DECIMALS"])
        config["CALLBACK_NETWORKS"] = callbacks.parse_networks(config["CALLBACK_ALLOWED_IPS"])
        config["TRUSTED_PROXIES"] = int(config["TRUSTED_PROXIES"])
        if config["TRUSTED_PROXIES"] < 0:
            raise ValueError("TRUSTED_PROXIES must be 0 or more")
    except ValueError as exc:
        raise RuntimeError(f"invalid configuration: {exc}") from None


def _configure_logging(app):
    """Log at LOG_LEVEL (INFO: one line per callback) through Flask's handler, to stderr."""
    app.logger.setLevel(app.config["LOG_LEVEL"].upper())
