"""LOG_LEVEL: read by LogSettings, applied by configure_logging."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from services.common.config import LogSettings, SettingsError
from services.common.logs import configure_logging


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_level_defaults_to_info_and_ignores_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOG_LEVEL", raising=False)
    assert LogSettings.from_env().level == "INFO"
    monkeypatch.setenv("LOG_LEVEL", " debug ")
    assert LogSettings.from_env().level == "DEBUG"


def test_unknown_level_is_a_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "chatty")
    with pytest.raises(SettingsError, match="LOG_LEVEL"):
        LogSettings.from_env()


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_logging_applies_the_level() -> None:
    configure_logging("test", "WARNING")
    assert logging.getLogger().level == logging.WARNING
    assert logging.getLogger("botocore").level == logging.WARNING
