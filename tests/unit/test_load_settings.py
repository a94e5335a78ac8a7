"""load_or_exit: a service does not start on settings it cannot read."""

from __future__ import annotations

import logging

import pytest

from services.common.config import SettingsError, load_or_exit

log = logging.getLogger("test")


def test_returns_what_was_loaded() -> None:
    assert load_or_exit(lambda: 42, log) == 42


def test_bad_settings_are_logged_and_exit_2(caplog: pytest.LogCaptureFixture) -> None:
    def bad() -> int:
        raise SettingsError("PORT must be an integer")

    with pytest.raises(SystemExit) as exited, caplog.at_level(logging.ERROR, "test"):
        load_or_exit(bad, log)
    assert exited.value.code == 2
    assert "bad settings: PORT must be an integer" in caplog.text


def test_other_errors_are_not_swallowed() -> None:
    def broken() -> int:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):
        load_or_exit(broken, log)
