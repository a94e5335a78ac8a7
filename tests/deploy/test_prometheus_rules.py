"""deploy/prometheus: the rules parse (promtool check rules), behave as intended on synthetic series
(promtool test rules), and use only the metric names that metrics.yaml defines, so the services
and the alerts cannot drift apart. promtool comes from Debian's prometheus package."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from services.webhooks import metrics as webhook_metrics
from tests.deploy.kube import REPO

PROMETHEUS = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS / "rules.yaml"
RULE_TESTS = PROMETHEUS / "rules.test.yaml"
CATALOG = PROMETHEUS / "metrics.yaml"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "inf", "nan", "atan2",
}  # fmt: skip
# Labels that Prometheus or its scrape configuration add, beside the catalog's own.
TARGET_LABELS = {"le", "job", "instance", "namespace", "pod", "container"}


def catalog() -> dict[str, Any]:
    return yaml.safe_load(CATALOG.read_text())["metrics"]


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def series_names(metrics: dict[str, Any]) -> set[str]:
    """Every series name the catalog's metrics expose."""
    names = set()
    for name, spec in metrics.items():
        names.add(name)
        if spec["type"] == "histogram":
            names |= {name + suffix for suffix in HISTOGRAM_SUFFIXES}
    return names


def metric_names(expr: str) -> set[str]:
    """The metric (and recording rule) names a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range and subquery durations
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\boffset\s+\S+", " ", expr)
    expr = re.sub(r"(?<![\w:])\d+(\.\d+)?([eE][+-]?\d+)?", " ", expr)  # numbers
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = match.group()
        follows = expr[match.end() :].lstrip()
        if word.lower() in PROMQL_KEYWORDS or follows.startswith("("):
            continue  # a keyword, a function or an aggregation
        names.add(word)
    return names


def label_names(expr: str) -> set[str]:
    """Labels named in matchers and in by/on/... clauses."""
    names = set()
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        names |= set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    for clause in re.findall(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr
    ):
        names |= {part.strip() for part in clause.split(",") if part.strip()}
    return names


def test_metric_name_extraction_understands_promql() -> None:
    expr = (
        'sum by (kind) (rate(media_jobs_completed_total{status="failed", kind=~"a|b"}[5m] '
        "offset 1h)) / on (kind) group_left max(media_queue_depth) > 1e3 and absent(up)"
    )
    assert metric_names(expr) == {"media_jobs_completed_total", "media_queue_depth", "up"}
    assert label_names(expr) == {"kind", "status"}


def test_catalog_is_well_formed() -> None:
    for name, spec in catalog().items():
        assert re.fullmatch(r"media_[a-z0-9_]+", name), name
        assert spec["type"] in ("counter", "gauge", "histogram"), name
        assert name.endswith("_total") == (spec["type"] == "counter"), name
        if spec["type"] == "histogram":
            assert name.endswith("_seconds") or name.endswith("_bytes"), name
        assert spec["help"].strip() and spec["exported_by"], name
        assert set(spec["exported_by"]) <= {"job_service", "notifier", "media_worker", "webhooks"}


def test_webhook_sender_exports_what_the_catalog_says() -> None:
    exported = {}
    for value in vars(webhook_metrics).values():
        if isinstance(value, MetricWrapperBase):
            (family,) = value.describe()
            name = family.name + ("_total" if family.type == "counter" else "")
            exported[name] = {"type": family.type, "labels": list(value._labelnames)}
    catalogued = {
        name: {"type": spec["type"], "labels": spec["labels"]}
        for name, spec in catalog().items()
        if "webhooks" in spec["exported_by"]
    }
    assert exported == catalogued


def test_rules_read_only_catalogued_metrics_and_labels() -> None:
    metrics = catalog()
    known = series_names(metrics)
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    labels = {label for spec in metrics.values() for label in spec["labels"]} | TARGET_LABELS
    for rule in rules():
        name = rule.get("alert") or rule.get("record")
        unknown = metric_names(rule["expr"]) - known - recorded
        assert not unknown, f"{name} reads {unknown}, which deploy/prometheus/metrics.yaml lacks"
        assert label_names(rule["expr"]) <= labels, name


def test_every_alert_is_labelled_and_explained() -> None:
    alerts = [rule for rule in rules() if "alert" in rule]
    names = {rule["alert"] for rule in alerts}
    # Issue 5 asks for these four families at least.
    for family in ("Stuck", "Outbox", "ErrorRate", "ConsumerLag"):
        assert any(family in name for name in names), family
    for rule in alerts:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert "for" in rule, f"{rule['alert']} would fire on a single bad scrape"


def test_every_alert_has_a_unit_test() -> None:
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {rule["alert"] for rule in rules() if "alert" in rule} <= tested


def test_unit_tests_feed_catalogued_series() -> None:
    known = series_names(catalog())
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for series in test["input_series"]:
            name = series["series"].split("{")[0]
            assert name in known, f"{test['name']}: {name}"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: apt-get install prometheus (Debian's package)")
    return found


def run_promtool(*args: str | Path) -> None:
    result = subprocess.run(
        [promtool(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=PROMETHEUS,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_rules() -> None:
    run_promtool("check", "rules", RULES)


def test_promtool_unit_tests_pass() -> None:
    run_promtool("test", "rules", RULE_TESTS)
