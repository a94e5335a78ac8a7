"""The files of a local stack in its run directory (`.run/` at the repo root unless
MEDIA_RUN_DIR says otherwise).

    env             `export KEY=VALUE` lines for a shell (`source .run/env`), mode 0600
    secret          the JWT signing secret of the running stack, mode 0600
    supervisor.pid  the background supervisor that `up` started
    supervisor.log  its log; the services and dependencies log to logs/<name>.log
    lock            held (flock) by whatever owns the stack: the supervisor or a foreground `run`
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shlex
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SUPERVISE_COMMAND = "_supervise"


def default_run_dir() -> Path:
    override = os.environ.get("MEDIA_RUN_DIR", "").strip()
    return Path(override).resolve() if override else REPO_ROOT / ".run"


def _write_private(path: Path, text: str) -> None:
    """Writes atomically with mode 0600 from the first byte."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def format_env(values: Mapping[str, str]) -> str:
    lines = ["# Written by `python -m devstack up`; `source` this file in a shell."]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def parse_env(text: str) -> dict[str, str]:
    """Reads `export KEY=VALUE` or `KEY=VALUE` lines (shell quoting allowed)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            words = words[1:]
        for word in words:
            key, sep, value = word.partition("=")
            if sep and key:
                values[key] = value
    return values


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is gone for our purposes (some containers' init never reaps).
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    return True


def _is_supervisor(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return process_alive(pid)  # no /proc (macOS): trust the pid file
    return b"devstack" in cmdline and SUPERVISE_COMMAND.encode() in cmdline


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def env_file(self) -> Path:
        return self.path / "env"

    @property
    def secret_file(self) -> Path:
        return self.path / "secret"

    @property
    def pid_file(self) -> Path:
        return self.path / "supervisor.pid"

    @property
    def supervisor_log(self) -> Path:
        return self.path / "supervisor.log"

    @property
    def log_dir(self) -> Path:
        return self.path / "logs"

    def ensure(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def new_secret(self) -> str:
        """A fresh signing secret for a fresh stack (its database starts empty anyway)."""
        secret = secrets.token_urlsafe(48)
        _write_private(self.secret_file, secret + "\n")
        return secret

    def read_secret(self) -> str | None:
        """The running stack's signing secret, for minting other users' tokens (tests, bench)."""
        try:
            return self.secret_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def write_env(self, values: Mapping[str, str]) -> None:
        _write_private(self.env_file, format_env(values))

    def read_env(self) -> dict[str, str] | None:
        try:
            return parse_env(self.env_file.read_text())
        except FileNotFoundError:
            return None

    def write_pid(self) -> None:
        self.pid_file.write_text(f"{os.getpid()}\n")

    def supervisor_pid(self) -> int | None:
        """The pid of a live supervisor for this directory, or None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if process_alive(pid) and _is_supervisor(pid) else None

    def clear(self) -> None:
        """Removes what says a stack is up (not the logs)."""
        for path in (self.env_file, self.pid_file, self.secret_file):
            path.unlink(missing_ok=True)

    def try_lock(self) -> int | None:
        """An exclusive lock on this run directory as an open fd (closing it unlocks), or None
        when another process holds it."""
        self.ensure()
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd


def signal_supervisor(pid: int, sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
