"""`python -m devstack up|down|run|env`: the local stack behind `make up`, `make down`
and `make run`.

up    starts everything in the background (a detached supervisor owns the processes), writes
      .run/env (`export KEY=VALUE` lines: JOB_SERVICE_ADDR, NOTIFIER_ADDR, MEDIA_TOKEN, ...) and
      returns once every service is healthy. Reuses a stack that is already up.
down  stops the background stack; succeeds when nothing runs.
run   starts everything in the foreground, runs the demo through mediactl (outputs saved in
      .run/outputs/), stops everything.
env   prints .run/env.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from devstack.procs import StartupError
from devstack.state import (
    REPO_ROOT,
    SUPERVISE_COMMAND,
    RunDir,
    default_run_dir,
    process_alive,
    signal_supervisor,
)

if TYPE_CHECKING:
    from devstack.stack import Stack

log = logging.getLogger("devstack")

UP_TIMEOUT = 240.0  # dependencies and services each have their own, shorter, timeouts
DOWN_TIMEOUT = 60.0


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived; unwinds like KeyboardInterrupt so every `finally` runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signum)


def _terminate_on_signals() -> None:
    """For the commands that own processes; never restored, since the command ends after
    its clean-up (and restoring the default would let a late SIGTERM skip that clean-up)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_terminated)


def _ignore_signals() -> None:
    """While stopping: a second Ctrl-C or SIGTERM must not cut the clean-up short."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="devstack: %(message)s", stream=sys.stderr, force=True
    )


def _print_env_hint(run: RunDir) -> None:
    values = run.read_env() or {}
    for key in ("JOB_SERVICE_ADDR", "NOTIFIER_ADDR"):
        print(f"{key}={values.get(key, '')}")
    print(f"\nTo use mediactl:  source {_display(run.env_file)}")
    print("Logs:             " + _display(run.log_dir))
    print("Stop it:          make down")


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# --- up / down ---------------------------------------------------------------------------------


def up(run: RunDir, *, workers: int = 1, timeout: float = UP_TIMEOUT) -> dict[str, str]:
    """Ensures a background stack is up in `run` and returns its client environment
    (what .run/env holds). Raises RuntimeError when it cannot start."""
    run.ensure()
    pid = run.supervisor_pid()
    if pid is not None:
        env = _wait_for_env(run, pid, timeout)
        log.info("a stack is already up (supervisor pid %d); reusing it", pid)
        return env
    started = time.monotonic()
    reader, writer = os.pipe()
    with open(run.supervisor_log, "wb") as supervisor_log:  # a new stack, a new log
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "devstack",
                SUPERVISE_COMMAND,
                "--ready-fd",
                str(writer),
                "--workers",
                str(workers),
            ],
            env={**os.environ, "MEDIA_RUN_DIR": str(run.path)},
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=supervisor_log,
            stderr=subprocess.STDOUT,
            pass_fds=(writer,),
            start_new_session=True,  # outlives this command and the terminal
        )
    os.close(writer)
    try:
        message = _read_until_eof(reader, timeout)
    except BaseException:
        # Ctrl-C or a timeout while starting: take the half-started stack down with us.
        proc.terminate()
        if not _wait_pid_gone(proc.pid, DOWN_TIMEOUT, proc):
            proc.kill()
            proc.wait()
        raise
    finally:
        os.close(reader)
    if not message.startswith("ready"):
        if not _wait_pid_gone(proc.pid, DOWN_TIMEOUT, proc):
            proc.kill()
            proc.wait()
        reason = message.strip() or "\n".join(_tail(run.supervisor_log, 40))
        raise RuntimeError(
            f"the stack did not start ({_display(run.supervisor_log)} has the details): {reason}"
        )
    log.info("stack is up in %.1f s (supervisor pid %d)", time.monotonic() - started, proc.pid)
    return run.read_env() or {}


@dataclass(frozen=True)
class UpStack:
    """A background stack as its clients see it (the values of .run/env)."""

    env: dict[str, str]
    secret: str  # signs tokens for other users (tests, the benchmark)
    started_here: bool  # False: it was already up and is left running

    @property
    def job_service_addr(self) -> str:
        return self.env["JOB_SERVICE_ADDR"]

    @property
    def notifier_addr(self) -> str:
        return self.env["NOTIFIER_ADDR"]

    @property
    def token(self) -> str:
        return self.env["MEDIA_TOKEN"]


def bench_stack(exit_stack: ExitStack, *, run: RunDir | None = None, workers: int = 1) -> UpStack:
    """Uses the stack `up` left running, or starts one the same way and registers its `down`
    on `exit_stack` (a stack that was already up keeps running)."""
    run = run or RunDir(default_run_dir())
    already_up = run.supervisor_pid() is not None
    env = up(run, workers=workers)
    if not already_up:
        exit_stack.callback(down, run)
    return UpStack(env=env, secret=run.read_secret() or "", started_here=not already_up)


def _read_until_eof(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"the stack was not up after {timeout:.0f} s")
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                return data.decode(errors="replace")
            data += chunk


def _wait_for_env(run: RunDir, pid: int, timeout: float) -> dict[str, str]:
    """Another `up` may still be starting this stack: wait for its env file."""
    deadline = time.monotonic() + timeout
    while (env := run.read_env()) is None:
        if not process_alive(pid) or time.monotonic() > deadline:
            raise RuntimeError(f"the stack in {run.path} is neither up nor starting")
        time.sleep(0.1)
    return env


def _wait_pid_gone(pid: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return True
        if proc is None and not process_alive(pid):
            return True
        time.sleep(0.05)
    return False


def _tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def down(run: RunDir, *, timeout: float = DOWN_TIMEOUT) -> bool:
    """Stops the background stack. Returns False when none was running."""
    pid = run.supervisor_pid()
    if pid is None:
        run.clear()
        return False
    signal_supervisor(pid, signal.SIGTERM)
    if not _wait_pid_gone(pid, timeout):
        # Its children get a signal when it dies (PR_SET_PDEATHSIG), so they go too.
        log.warning("supervisor %d did not stop within %.0f s; killing it", pid, timeout)
        signal_supervisor(pid, signal.SIGKILL)
        _wait_pid_gone(pid, 10)
    run.clear()
    return True


def supervise(run: RunDir, ready_fd: int, workers: int) -> int:
    """The background owner of an `up` stack: starts it, reports on `ready_fd`, then waits
    for SIGTERM and stops everything."""
    from devstack.stack import start_stack

    lock = run.try_lock()
    if lock is None:
        os.write(ready_fd, f"busy: another devstack owns {run.path}\n".encode())
        os.close(ready_fd)
        return 75
    run.write_pid()
    stack = None
    code = 0
    _terminate_on_signals()
    try:
        stack = start_stack(run, workers=workers)
        run.write_env(stack.client_env())
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
        ready_fd = -1
        _watch(stack)
    except (Terminated, KeyboardInterrupt) as exc:
        log.info("%s: stopping", exc or "interrupted")
    except Exception as exc:
        if isinstance(exc, StartupError):
            log.error("%s", exc)  # already says what failed, with that log's tail
        else:
            traceback.print_exc()
        if ready_fd >= 0:
            os.write(ready_fd, f"failed: {exc}\n".encode()[-16000:])
        code = 1
    finally:
        _ignore_signals()
        if ready_fd >= 0:
            os.close(ready_fd)
        try:
            if stack is not None:
                stack.stop()
        finally:
            run.clear()
            os.close(lock)
    return code


def _watch(stack: Stack) -> None:
    """Sleeps until a signal, logging any process that dies on its own (fault tests kill
    them on purpose; nothing here restarts them)."""
    reported: set[int] = set()
    while True:
        time.sleep(1.0)
        procs = [s.process for s in stack.deps.servers] + [p.process for p in stack.services.procs]
        for proc in procs:
            if proc is not None and not proc.running and id(proc) not in reported:
                reported.add(id(proc))
                log.warning(
                    "%s exited with code %s (log: %s)", proc.name, proc.returncode, proc.log_path
                )


# --- run ---------------------------------------------------------------------------------------


def run_foreground(run: RunDir, *, workers: int = 1) -> int:
    from devstack.demo import run_demo
    from devstack.stack import start_stack

    lock = run.try_lock()
    if lock is None:
        pid = run.supervisor_pid()
        env = run.read_env() if pid is not None else None
        if env is None:
            log.error("another devstack is starting or running in %s", run.path)
            return 1
        log.info("using the stack that `up` started (pid %d); it keeps running afterwards", pid)
        try:
            return run_demo(env, run.path / "outputs")
        except KeyboardInterrupt:
            return 130
    stack = None
    _terminate_on_signals()
    try:
        stack = start_stack(run, workers=workers)
        return run_demo(stack.client_env(), run.path / "outputs")
    except KeyboardInterrupt:
        log.info("interrupted")
        return 130
    except Terminated as exc:
        log.info("%s: stopping", exc)
        return 128 + exc.signum
    except StartupError as exc:
        log.error("the stack did not start: %s", exc)
        return 1
    finally:
        _ignore_signals()
        try:
            if stack is not None:
                log.info("stopping the stack")
                stack.stop()
        finally:
            run.secret_file.unlink(missing_ok=True)
            os.close(lock)


# --- entry point -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{up,down,run,env}")
    for name, text in (("up", "start the stack in the background"), ("run", "start, demo, stop")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--workers", type=int, default=1, help="media workers (default 1)")
    commands.add_parser("down", help="stop the background stack")
    commands.add_parser("env", help="print .run/env")
    supervise_parser = commands.add_parser(SUPERVISE_COMMAND)
    supervise_parser.add_argument("--ready-fd", type=int, required=True)
    supervise_parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)

    _configure_logging()
    run = RunDir(default_run_dir())
    if args.command == "up":
        try:
            up(run, workers=args.workers)
        except (RuntimeError, TimeoutError) as exc:
            log.error("%s", exc)
            return 1
        except KeyboardInterrupt:
            return 130
        _print_env_hint(run)
        return 0
    if args.command == "down":
        log.info("stack stopped" if down(run) else "no stack is running")
        return 0
    if args.command == "env":
        try:
            sys.stdout.write(run.env_file.read_text())
        except FileNotFoundError:
            log.error("no stack is up in %s (start one with `make up`)", run.path)
            return 1
        return 0
    if args.command == "run":
        return run_foreground(run, workers=args.workers)
    if args.command == SUPERVISE_COMMAND:
        return supervise(run, args.ready_fd, args.workers)
    parser.error(f"unknown command {args.command}")
    return 2
