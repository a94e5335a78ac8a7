"""The `make run` demo: one image job and one video job through the mediactl CLI, with its live
progress passed through to this terminal; their outputs are saved under the run directory by
mediactl's own download code (`create --watch -o DIR`), and the files are listed at the end.

Files, not presigned URLs: the URLs point at the local S3, which stops with the demo. Each job is
shown once, by `create --watch` (which ends by printing the finished job), so no `mediactl get`
follows it."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.mediactl.download import saved_files

DEMO_JOBS: list[tuple[str, list[str]]] = [
    (
        "image",
        [
            "create",
            "image",
            "--prompt",
            "A lighthouse on a rocky cliff at sunset, watercolor",
            "--size",
            "1024x1024",
            "--format",
            "png",
            "--watch",
        ],
    ),
    (
        "video",
        [
            "create",
            "video",
            "--prompt",
            "Slow waves rolling onto a sandy beach at dawn",
            "--aspect-ratio",
            "16:9",
            "--duration",
            "4",
            "--watch",
        ],
    ),
]

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-{v}[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
# Job IDs are UUIDv7; prefer those over any other UUID mediactl might print.
_JOB_ID_V7 = re.compile(_UUID.replace("{v}", "7"), re.IGNORECASE)
_ANY_UUID = re.compile(_UUID.replace("{v}", "[0-9a-f]"), re.IGNORECASE)


@dataclass
class DemoResult:
    kind: str
    job_id: str | None
    returncode: int
    files: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.job_id is not None and bool(self.files)


def mediactl(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.mediactl", *args]


def find_job_id(text: str) -> str | None:
    match = _JOB_ID_V7.search(text) or _ANY_UUID.search(text)
    return match.group(0).lower() if match else None


def run_tee(argv: list[str], env: Mapping[str, str]) -> tuple[int, str]:
    """Runs `argv`, copying its output here as it arrives and returning it too. On a terminal
    the child gets a pseudo-terminal, so its progress bar renders as it would run directly."""
    if sys.stdout.isatty():
        import pty

        reader, writer = pty.openpty()
        _like_our_terminal(sys.stdout.fileno(), writer)
    else:
        reader, writer = os.pipe()
    chunks: list[bytes] = []
    out = sys.stdout.buffer
    sys.stdout.flush()
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=writer, stderr=writer, env=dict(env)
        )
    finally:
        os.close(writer)
    try:
        while True:
            try:
                chunk = os.read(reader, 4096)
            except OSError:  # EIO: the pty's other side closed
                break
            if not chunk:
                break
            chunks.append(chunk)
            out.write(chunk)
            out.flush()
        returncode = proc.wait()
    finally:
        os.close(reader)
        # On Ctrl-C the child got SIGINT from the terminal too; make sure it is gone.
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return returncode, b"".join(chunks).decode(errors="replace")


def _like_our_terminal(source_fd: int, target_fd: int) -> None:
    """Same width as ours, and no \n -> \r\n translation: our own terminal does that."""
    with contextlib.suppress(OSError, ImportError):
        import fcntl
        import termios

        size = fcntl.ioctl(source_fd, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(target_fd, termios.TIOCSWINSZ, size)
        attrs = termios.tcgetattr(target_fd)
        attrs[1] &= ~termios.ONLCR
        termios.tcsetattr(target_fd, termios.TCSANOW, attrs)


def display_path(path: Path) -> str:
    """Relative to the current directory when under it (`.run/outputs/...`), else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path.resolve())


def run_demo(env: Mapping[str, str], outputs: Path) -> int:
    """Returns 0 when every demo job succeeded and its outputs were saved into `outputs`."""
    child_env = {**os.environ, **env}
    out_dir = display_path(outputs)
    results: list[DemoResult] = []
    for kind, args in DEMO_JOBS:
        argv = [*args, "-o", out_dir]
        print(f"\n==> {kind} job: mediactl {shlex.join(argv)}", flush=True)
        returncode, text = run_tee(mediactl(*argv), child_env)
        job_id = find_job_id(text)
        files = saved_files(outputs, job_id) if job_id else []
        results.append(DemoResult(kind, job_id, returncode, files))
    print(f"\n==> results (files under {out_dir}/)", flush=True)
    for result in results:
        if result.ok:
            state = "succeeded"
        elif result.job_id is None:
            state = "no job ID in mediactl's output"
        else:
            state = f"FAILED (mediactl exit code {result.returncode})"
        print(f"{result.kind} job {result.job_id or '?'}: {state}", flush=True)
        for path in result.files:
            print(f"  {display_path(path)}", flush=True)
    return 0 if all(r.ok for r in results) else 1
