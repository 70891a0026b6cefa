"""The alert rules in deploy/prometheus/: valid for Prometheus' own promtool, each alert firing
when it should (promtool's unit tests), and naming only metrics the service serves."""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.test_metrics import METRICS_TOKEN, gunicorn_numbers

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
RULE_FILES = ("alerts.yml", "optional-alerts.yml")


@pytest.fixture
def engine():
    """The service runs here with replication on, so that every metric a rule names is served:
    replication is SQLite's (PostgreSQL keeps its own copies)."""
    return "sqlite"


def promtool():
    """Debian's promtool (package prometheus; .ci/run installs it). Outside CI a machine without
    it skips these tests, saying why; under CI=true they must run."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: promtool is needed (apt-get install prometheus; .ci/run installs it)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return path


def run(*args):
    return subprocess.run([promtool(), *args], cwd=RULES, capture_output=True, text=True, timeout=60, check=False)


def test_promtool_accepts_the_rules():
    result = run("check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout and "SUCCESS: 1 rules found" in result.stdout, result.stdout


def test_each_alert_fires_when_it_should_and_not_before():
    result = run("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {case["alertname"] for test in yaml.safe_load((RULES / "alerts.test.yml").read_text())["tests"]
              for case in test.get("alert_rule_test", []) if case["exp_alerts"]}
    assert tested == set(alerts()), "every alert has a test in which it fires"


def test_the_ggr_query_in_the_docs_is_the_one_promtool_checks():
    """GGR per day is one PromQL expression; the one in docs/monitoring.md is the one whose
    result alerts.test.yml checks (stakes and payouts summed over instances, refunds not)."""
    tests = yaml.safe_load((RULES / "alerts.test.yml").read_text())["tests"]
    (expr,) = [case["expr"] for test in tests for case in test.get("promql_expr_test", [])]
    docs = (RULES.parent.parent / "docs" / "monitoring.md").read_text()
    assert " ".join(expr.split()) in " ".join(docs.split())


def alerts():
    """{alert name: its expression} of every rule file."""
    return {rule["alert"]: rule["expr"] for name in RULE_FILES
            for group in yaml.safe_load((RULES / name).read_text())["groups"] for rule in group["rules"]}


def test_every_metric_a_rule_names_is_served(gunicorn, tmp_path):
    """Scraped from a real gunicorn with replication on (two workers, a file replica): every
    wallet_ metric a rule names is in /metrics; the only other one is Prometheus' own `up`."""
    named = {name for expr in alerts().values() for name in re.findall(r"\b(?:wallet_[a-z0-9_]+|up)\b", expr)}
    assert "wallet_replication_lag_seconds" in named and "wallet_callback_duration_seconds_bucket" in named
    server = gunicorn("rules", workers=2, METRICS_TOKEN=METRICS_TOKEN,
                      LITESTREAM_REPLICA_URL=(tmp_path / "replica").as_uri())
    deadline = time.monotonic() + 30
    while (numbers := gunicorn_numbers(server)).get(("wallet_replication_up", ())) != 1:
        assert time.monotonic() < deadline, f"replication never reported ok:\n{server.log()}"
        time.sleep(0.2)
    served = {sample for sample, _ in numbers}
    assert named - served == {"up"}, named - served
    assert 0 <= numbers[("wallet_replication_lag_seconds", ())] < 30
