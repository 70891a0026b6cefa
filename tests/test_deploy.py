"""The one-file deploys beside the Procfile (app.json, render.yaml, fly.toml, Dockerfile), parsed:
each runs the Procfile's command, names only settings the service reads, and checks paths it
serves. (Nothing here needs the platforms or docker: the files are read as they would be.)"""

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

import app as app_module

ROOT = Path(__file__).resolve().parent.parent
# What the service reads: the app's settings, gunicorn's (the Procfile's command), Litestream's
# credentials (replication), and in the image only, Python's own two.
SERVICE_READS = set(app_module.ENVIRONMENT) | {"PORT", "WEB_CONCURRENCY", "GUNICORN_CMD_ARGS",
                                                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
IMAGE_ONLY = {"PATH", "PYTHONUNBUFFERED"}
SECRETS = ("CALLBACK_TOKEN", "ADMIN_TOKEN", "METRICS_TOKEN")


@pytest.fixture
def engine():
    """The files are the subject here, not the books: one engine serves the paths they name."""
    return "sqlite"


def procfile_command():
    (line,) = [line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:")]
    return shlex.split(line.removeprefix("web:"))


@pytest.fixture
def served(make_app):
    """Whether a GET of a path is answered 200 by the service (with every token set)."""
    client = make_app(METRICS_TOKEN="m").test_client()

    def answers(path):
        return client.get(path, headers={"Authorization": "Bearer m"}).status_code == 200

    return answers


def dockerfile():
    """The Dockerfile's instructions as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_the_dockerfile_builds_the_venv_apart_and_runs_the_procfiles_command_as_another_user(served):
    steps = dockerfile()
    stages = [args for step, args in steps if step == "FROM"]
    python = (ROOT / ".python-version").read_text().strip()
    assert len(stages) == 2 and all(stage.split()[0] == f"python:{python}-slim" for stage in stages), stages
    builder = stages[0].split()[-1]
    assert any(step == "COPY" and args.startswith(f"--from={builder} /venv ") for step, args in steps)
    final = steps[[step for step, _ in steps].index("FROM", 1):]
    user = [args for step, args in final if step == "USER"]
    assert user and user[-1] not in ("root", "0"), user
    commands = [args for step, args in final if step == "CMD"]
    assert [json.loads(commands[-1])] == [procfile_command()], "the Procfile's command, in exec form"
    assert [step for step, _ in final].index("USER") < [step for step, _ in final].index("CMD")
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(args for step, args in final if step == "ENV")))
    assert set(env) <= SERVICE_READS | IMAGE_ONLY, set(env) - SERVICE_READS - IMAGE_ONLY
    assert [args for step, args in final if step == "EXPOSE"] == [env["PORT"]]
    (check,) = [args for step, args in final if step == "HEALTHCHECK"]
    assert "/healthz" in check and served("/healthz")


def test_the_image_leaves_out_the_local_venv_and_databases():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "*.db", "instance"} <= set(ignored)


def test_heroku_app_json_generates_the_secrets_and_adds_postgresql():
    manifest = json.loads((ROOT / "app.json").read_text())
    env = manifest["env"]
    assert set(env) <= SERVICE_READS, set(env) - SERVICE_READS
    for secret in SECRETS:
        assert env[secret] == {"description": env[secret]["description"], "generator": "secret"}, secret
    assert any(addon["plan"].startswith("heroku-postgresql:") for addon in manifest["addons"])
    assert "DATABASE_PATH" not in env  # Heroku's disk is wiped on every restart: PostgreSQL only
    assert manifest["buildpacks"] == [{"url": "heroku/python"}]  # which runs the Procfile


def test_render_yaml_serves_the_procfiles_command_on_its_postgresql(served):
    blueprint = yaml.safe_load((ROOT / "render.yaml").read_text())
    (service,) = blueprint["services"]
    assert shlex.split(service["startCommand"]) == procfile_command()
    assert service["buildCommand"] == "pip install -r requirements.txt"
    assert served(service["healthCheckPath"])
    env = {var["key"]: var for var in service["envVars"]}
    assert set(env) <= SERVICE_READS, set(env) - SERVICE_READS
    assert env["DATABASE_URL"]["fromDatabase"]["name"] in {database["name"] for database in blueprint["databases"]}
    assert env["DATABASE_URL"]["fromDatabase"]["property"] == "connectionString"
    for secret in SECRETS:
        assert env[secret] == {"key": secret, "sync": False}, secret  # asked for at deploy, never in the file


def test_fly_toml_keeps_sqlite_on_its_volume_and_lets_flys_prometheus_scrape(served, make_app):
    config = tomllib.loads((ROOT / "fly.toml").read_text())
    env = config["env"]
    assert set(env) <= SERVICE_READS, set(env) - SERVICE_READS
    assert not set(env) & {*SECRETS, "LITESTREAM_REPLICA_URL", "AWS_SECRET_ACCESS_KEY"}  # fly secrets set
    assert config["build"]["dockerfile"] == "Dockerfile"  # whose CMD is the Procfile's command
    assert Path(env["DATABASE_PATH"]).parent == Path(config["mounts"]["destination"])
    service = config["http_service"]
    assert service["internal_port"] == int(env["PORT"]) and service["min_machines_running"] == 1
    (check,) = service["checks"]
    assert served(check["path"])
    # Fly's Prometheus cannot send a token: it scrapes METRICS_PORT, where none is needed.
    assert config["metrics"]["port"] == int(env["METRICS_PORT"]) != service["internal_port"]
    assert served(config["metrics"]["path"])
