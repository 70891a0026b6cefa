"""The callback wallet: create_app() reads its configuration from the environment."""

import os

import click
from flask import Flask, jsonify
from werkzeug.middleware.proxy_fix import ProxyFix

import db
import replication
from cli import commands, simulator
from money.units import parse_currency_decimals
from web import api, callbacks, console, errors, metrics, openapi, paths
from web.serving import parse_metrics_port

ENVIRONMENT = (
    "DATABASE_URL",
    "DATABASE_PATH",
    "CALLBACK_TOKEN",
    "CALLBACK_ALLOWED_IPS",
    "TRUSTED_PROXIES",
    "ADMIN_TOKEN",
    "METRICS_TOKEN",
    "METRICS_PORT",
    "CURRENCY_DECIMALS",
    "SQLITE_SYNCHRONOUS",
    "LOG_LEVEL",
    "LITESTREAM_REPLICA_URL",
    "SECRET_KEY",
    "CONSOLE_INSECURE_COOKIE",
)


class WalletFlask(Flask):
    """Flask, routing on the path as the client sent it: every segment means one thing (paths.py)."""

    url_map_class = paths.SegmentMap


def create_app(test_config=None):
    """Create the app: configuration, logging, database schema, routes and commands."""
    app = WalletFlask(__name__, instance_relative_config=True, static_folder=None)  # serves no files
    app.url_map.merge_slashes = False  # "//" is a JSON 404, not an HTML redirect
    app.config.from_mapping(
        DATABASE_URL=None,
        DATABASE_PATH=replication.default_database_path(),  # instance/wallet.db, as the master finds it
        CALLBACK_TOKEN=None,
        CALLBACK_ALLOWED_IPS="",
        TRUSTED_PROXIES="0",
        ADMIN_TOKEN=None,
        METRICS_TOKEN=None,
        METRICS_PORT=None,
        CURRENCY_DECIMALS="",
        SQLITE_SYNCHRONOUS="FULL",
        LOG_LEVEL="INFO",
        LITESTREAM_REPLICA_URL=None,
        SECRET_KEY=None,
        CONSOLE_INSECURE_COOKIE="",
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    app.config.update({key: os.environ[key] for key in ENVIRONMENT if key in os.environ})
    if test_config is not None:
        app.config.update(test_config)
    _normalise_config(app)
    _configure_logging(app)
    serving = _serving()
    try:
        if warning := replication.check_app(app.config, serving):  # refuses what would lose the replica's books
            app.logger.warning(warning)
    except replication.ConfigurationError as exc:
        raise db.StartupError(str(exc)) from None

    errors.register(app)
    db.init_app(app, create=serving)
    paths.init_app(app)
    app.register_blueprint(callbacks.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(metrics.bp)
    if not console.init_app(app) and serving:
        app.logger.info("the operator's console (/console/) is off: set SECRET_KEY (and ADMIN_TOKEN) to turn it on")
    app.cli.add_command(commands.wallet_cli)
    app.cli.add_command(simulator.simulate_command)
    if app.config["TRUSTED_PROXIES"]:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=app.config["TRUSTED_PROXIES"])

    @app.get("/healthz")
    def healthz():
        """Report healthy only after a real round-trip to books that can be written, within
        db.HEALTH_WAIT_S of waiting for the worker's connection."""
        try:
            db.get_db(wait=db.HEALTH_WAIT_S).ping()
        except db.DatabaseUnavailable as exc:
            db.unavailable(exc)
            return jsonify({"status": "unavailable", "error": "database_unavailable", "message": str(exc),
                            **replication.health(app.config)}), 503
        # Replication failing does not make a working wallet unhealthy: still 200, said in the body.
        return jsonify({"status": "ok", **replication.health(app.config)})

    if app.config["CALLBACK_TOKEN"] is None and serving:
        app.logger.warning(
            "CALLBACK_TOKEN is not set: anyone who can reach POST /callback can move money. "
            "Set CALLBACK_TOKEN and give the provider the URL /callback/<CALLBACK_TOKEN>."
        )
    return app


def _serving():
    """Whether the app is made to serve (gunicorn, `flask run`, the tests) rather than for
    another `flask` command: a command must not create a database it was pointed at by mistake."""
    context = click.get_current_context(silent=True)
    return context is None or context.info_name == "run"


def _normalise_config(app):
    """Turn the environment's strings into checked values; refuse to start on a bad one."""
    config = app.config
    for key in ("CALLBACK_TOKEN", "ADMIN_TOKEN", "METRICS_TOKEN", "DATABASE_URL", "LITESTREAM_REPLICA_URL"):
        config[key] = (config[key] or "").strip() or None
    try:
        for key in ("CALLBACK_TOKEN", "ADMIN_TOKEN", "METRICS_TOKEN"):
            _check_token(key, config[key])
        config["CALLBACK_TOKENS"] = callbacks.parse_tokens(config["CALLBACK_TOKEN"])
        config["CURRENCY_DECIMALS"] = parse_currency_decimals(config["CURRENCY_DECIMALS"])
        config["CALLBACK_NETWORKS"] = callbacks.parse_networks(config["CALLBACK_ALLOWED_IPS"])
        config["METRICS_PORT"] = parse_metrics_port(config["METRICS_PORT"])
        config["TRUSTED_PROXIES"] = int(config["TRUSTED_PROXIES"])
        if config["TRUSTED_PROXIES"] < 0:
            raise ValueError("TRUSTED_PROXIES must be 0 or more")
    except ValueError as exc:
        raise db.StartupError(f"invalid configuration: {exc}") from None


def _check_token(key, token):
    """Refuse a token that is not printable ASCII: HTTP carries a header's bytes as Latin-1 and
    clients encode a non-ASCII token differently (curl sends UTF-8, Python's http.client
    Latin-1), so such a token could never be sent reliably; better refused at start than an API
    nobody can use."""
    if token is not None and not all(" " <= char <= "~" for char in token):
        raise ValueError(f"{key} must be printable ASCII (letters, digits and punctuation): clients send "
                         "other characters in different encodings, so such a token cannot be sent reliably")


def _configure_logging(app):
    """Log at LOG_LEVEL (INFO: one line per callback) through Flask's handler, to stderr."""
    app.logger.setLevel(app.config["LOG_LEVEL"].upper())
