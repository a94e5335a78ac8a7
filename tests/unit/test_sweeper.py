"""The sweeper's rules: which object under jobs/ goes and why, how a key names its job, and its
settings. (tests/e2e/test_sweeper.py runs the sweeper itself against real servers.)"""

from __future__ import annotations

import uuid

import pytest

from services.common import keys
from services.common.config import SettingsError
from services.job_service.settings import SweepSettings
from services.job_service.sweep_rules import JobFacts, job_of, verdict

JOB = "0190f3c4-8a1b-7c2d-9e3f-405162738495"
OUT_1 = keys.output_key(JOB, 1, 0, "image/png")
OUT_2 = keys.output_key(JOB, 2, 0, "image/png")
INPUT = keys.input_key(JOB)


def finished(*recorded: str, input_due: bool = True) -> JobFacts:
    return JobFacts(active=False, attempt=2, input_due=input_due, outputs=frozenset(recorded))


def running(attempt: int = 2) -> JobFacts:
    return JobFacts(active=True, attempt=attempt, input_due=False)


def test_job_of_reads_only_the_canonical_job_prefix() -> None:
    assert job_of(INPUT) == uuid.UUID(JOB)
    assert job_of(OUT_1) == uuid.UUID(JOB)
    assert job_of(f"{keys.job_prefix(JOB)}anything/else") == uuid.UUID(JOB)
    for other in (
        f"jobs/{JOB.upper()}/input",  # a UUID, but not as job_prefix spells one
        f"jobs/{JOB.replace('-', '')}/input",
        f"jobs/{{{JOB}}}/input",
        "jobs/not-a-job/input",
        "jobs/",
        f"uploads/{JOB}",
        f"/jobs/{JOB}/input",
    ):
        assert job_of(other) is None, other


def test_a_recorded_output_always_stays() -> None:
    assert verdict(OUT_2, finished(OUT_2)) is None
    assert verdict(OUT_1, finished(OUT_1, OUT_2)) is None


def test_unrecorded_outputs_of_a_finished_job_are_orphans() -> None:
    assert verdict(OUT_1, finished(OUT_2)) == "orphan"  # a stale attempt's
    assert verdict(OUT_2, finished()) == "orphan"  # a job that ended without outputs
    assert verdict(keys.output_key(JOB, 7, 0, "image/png"), finished(OUT_2)) == "orphan"


def test_an_active_job_keeps_its_current_attempt_and_loses_earlier_ones() -> None:
    assert verdict(OUT_2, running(attempt=2)) is None  # uploaded, not yet recorded
    assert verdict(OUT_1, running(attempt=2)) == "orphan"  # the attempt before
    assert verdict(OUT_2, running(attempt=1)) is None  # claimed after the job was read


def test_the_input_goes_only_when_its_job_finished_past_the_retention() -> None:
    assert verdict(INPUT, running()) is None
    assert verdict(INPUT, JobFacts(active=True, attempt=0, input_due=False)) is None  # queued
    assert verdict(INPUT, finished(input_due=False)) is None  # within INPUT_RETENTION_SECONDS
    assert verdict(INPUT, finished(input_due=True)) == "input"


def test_anything_of_no_job_is_an_orphan() -> None:
    for key in (INPUT, OUT_1, "jobs/not-a-job/x", f"{keys.job_prefix(JOB)}notes.txt"):
        assert verdict(key, None) == "orphan", key


def test_keys_outside_the_layout_under_a_job_are_orphans() -> None:
    for key in (
        f"{keys.job_prefix(JOB)}notes.txt",
        f"{keys.job_prefix(JOB)}1/output-0.PNG",
        f"{keys.job_prefix(JOB)}01/output-0.png",  # a spelling output_key never gives
        f"{keys.job_prefix(JOB)}input.png",
    ):
        assert verdict(key, running()) == "orphan", key


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "SWEEP_INTERVAL_SECONDS",
        "INPUT_RETENTION_SECONDS",
        "SWEEP_GRACE_SECONDS",
        "SWEEP_MAX_PER_ROUND",
        "NOTIFICATION_RETENTION_SECONDS",
        "WEBHOOK_DELIVERY_RETENTION_SECONDS",
    ):
        monkeypatch.delenv(name, raising=False)
    thirty_days = 30 * 24 * 3600.0
    assert SweepSettings.from_env() == SweepSettings(
        interval_seconds=60.0,
        input_retention_seconds=0.0,
        grace_seconds=3600.0,
        max_per_round=10_000,
        notification_retention_seconds=thirty_days,
        webhook_delivery_retention_seconds=thirty_days,
    )


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEP_INTERVAL_SECONDS", "0")  # off
    monkeypatch.setenv("INPUT_RETENTION_SECONDS", "86400")
    monkeypatch.setenv("SWEEP_GRACE_SECONDS", "2.5")
    monkeypatch.setenv("SWEEP_MAX_PER_ROUND", "500")
    monkeypatch.setenv("NOTIFICATION_RETENTION_SECONDS", "3600")
    monkeypatch.setenv("WEBHOOK_DELIVERY_RETENTION_SECONDS", "7200.5")
    assert SweepSettings.from_env() == SweepSettings(0.0, 86400.0, 2.5, 500, 3600.0, 7200.5)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SWEEP_INTERVAL_SECONDS", "-1"),
        ("INPUT_RETENTION_SECONDS", "nan"),
        ("SWEEP_GRACE_SECONDS", "an hour"),
        ("SWEEP_MAX_PER_ROUND", "0"),
        ("NOTIFICATION_RETENTION_SECONDS", "0"),
        ("NOTIFICATION_RETENTION_SECONDS", "a month"),
        ("WEBHOOK_DELIVERY_RETENTION_SECONDS", "-5"),
        ("WEBHOOK_DELIVERY_RETENTION_SECONDS", "nan"),
    ],
)
def test_bad_settings_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        SweepSettings.from_env()
