"""Child processes of the local stack: spawning with a log file, stopping with escalation, free
ports, and making sure nothing outlives the process that started it."""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


class StartupError(RuntimeError):
    """A child did not become ready; the message carries the tail of its log."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(f"{message}\n--- last log lines ---\n{log_tail}" if log_tail else message)
        self.log_tail = log_tail


def _port_window() -> tuple[int, int]:
    # Ports below the kernel's ephemeral range: no outgoing connection can grab one between our
    # check and the server's bind, and a restarted server gets its old port back.
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    high = low - 1
    return (max(1024, high - 12000), high) if high > 2048 else (20000, 30000)


def _can_bind(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now and that this process has not handed out before."""
    low, high = _port_window()
    with _handed_out_lock:
        for _ in range(500):
            port = random.randint(low, high)
            if port not in _handed_out and _can_bind(host, port):
                _handed_out.add(port)
                return port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        _handed_out.add(port)
        return port


# util-linux's setpriv arms PR_SET_PDEATHSIG and execs the command. Doing it through a program
# rather than a preexec_fn lets subprocess use vfork: a fork() from a process that holds gRPC
# channels runs gRPC's fork handlers in the child, which can abort it before it execs.
_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


def _die_with_parent(sig: int) -> list[str]:
    """An argv prefix that makes the child get `sig` when its parent dies, even by SIGKILL.

    Linux sends it when the *thread* that forked exits, so it is only armed when spawning from the
    main thread (whose exit ends the process)."""
    if _SETPRIV is None or threading.current_thread() is not threading.main_thread():
        return []
    return [_SETPRIV, f"--pdeathsig={signal.Signals(sig).name.removeprefix('SIG')}", "--"]


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime) counted after the parenthesised command name, which may hold spaces.
    return stat.rpartition(")")[2].split()[19]


def reap_stale(pid_path: Path) -> None:
    """Kills what a previous, crashed run left behind (same pid and same start time only)."""
    try:
        pid_text, _, started = pid_path.read_text().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return
    if started.strip() and _start_time(pid) == started.strip():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _start_time(pid) == started.strip() and time.monotonic() < deadline:
            time.sleep(0.02)
    pid_path.unlink(missing_ok=True)


def run_as(user: str | None) -> dict[str, Any]:
    """subprocess arguments that switch to `user` entirely: with root's group kept, a
    directory's group bits (often ---) would apply instead of its other bits."""
    if user is None:
        return {}
    import pwd

    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


@dataclass
class ManagedProcess:
    """One child in its own session (so a terminal's Ctrl-C reaches only us, and we stop
    children in order), output appended to `log_path`."""

    name: str
    argv: list[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    user: str | None = None  # run as this system user (needs root)
    stop_signal: int = signal.SIGTERM
    pid_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log_offset: int = field(default=0, init=False, repr=False)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def spawn(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        if self.pid_path is not None:
            reap_stale(self.pid_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        user_args = run_as(self.user)
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            log.write(f"--- {stamp} starting {self.name}: {shlex.join(self.argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(  # type: ignore[call-overload]
                [*_die_with_parent(self.stop_signal), *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(self.env) if self.env is not None else None,
                cwd=self.cwd,
                start_new_session=True,
                **user_args,
            )
        if self.pid_path is not None:
            self.pid_path.parent.mkdir(parents=True, exist_ok=True)
            self.pid_path.write_text(f"{self._proc.pid} {_start_time(self._proc.pid) or ''}\n")

    def signal(self, sig: int) -> None:
        if self.running and self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Asks politely (stop_signal), then SIGKILLs the whole process group after `timeout`."""
        stop_all([self], timeout)
        return self.returncode

    def kill(self) -> None:
        """SIGKILL to the process group, like a crash; waits until it is gone."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._forget()

    def wait(self, timeout: float | None = None) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._proc.wait(timeout)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines written since the latest spawn."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _forget(self) -> None:
        if self.pid_path is not None:
            self.pid_path.unlink(missing_ok=True)


def stop_all(procs: Iterable[ManagedProcess], timeout: float = 10.0) -> None:
    """Signals every process at once, then waits on them with one shared deadline."""
    procs = [p for p in procs if p._proc is not None]
    for proc in procs:
        proc.signal(proc.stop_signal)
    deadline = time.monotonic() + timeout
    for proc in procs:
        assert proc._proc is not None
        try:
            proc._proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            # Still unreaped, so the group id cannot have been reused.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc._proc.pid, signal.SIGKILL)
            proc._proc.wait()
        proc._forget()


def wait_until(
    proc: ManagedProcess,
    ready: Callable[[], bool],
    timeout: float,
    *,
    interval: float = 0.02,
) -> None:
    """Polls `ready` until it returns True; raises StartupError if the process exits first or
    the timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        if not proc.running:
            raise StartupError(
                f"{proc.name} exited with code {proc.returncode} during start-up "
                f"(log: {proc.log_path})",
                proc.log_tail(),
            )
        if ready():
            return
        if time.monotonic() > deadline:
            raise StartupError(
                f"{proc.name} was not ready after {timeout:.0f} s (log: {proc.log_path})",
                proc.log_tail(),
            )
        time.sleep(interval)
