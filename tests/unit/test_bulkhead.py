"""The bulkhead: a bounded pool of threads whose calls give up after a timeout, and whose stuck
threads are neither multiplied nor waited for at exit; and the S3 readiness probe built on one."""

from __future__ import annotations

import asyncio
import contextvars
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import suppress

import pytest

from services.common.bulkhead import Bulkhead, BulkheadTimeout
from services.common.config import S3Settings
from services.common.s3 import BucketProbe

# Hang guard for calls that are released by the test: never a statement about speed.
GUARD_SECONDS = 30.0

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """What stuck calls wait on; opened at the end whatever happens, so no thread outlives it."""
    event = threading.Event()
    yield event
    event.set()


def threads_named(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"{prefix}_")]


async def eventually_idle(bulkhead: Bulkhead) -> None:
    """Until every thread has come back (the loop hears of it a moment after the gate opens)."""
    deadline = time.monotonic() + GUARD_SECONDS
    while True:
        if not bulkhead.busy:
            return
        assert time.monotonic() < deadline, "the threads never came back"
        await asyncio.sleep(0.01)


async def test_a_call_runs_in_a_thread_with_the_callers_context() -> None:
    bulkhead = Bulkhead("ctx", 2, GUARD_SECONDS)
    request_id.set("r-1")

    def work(a: int, *, b: int) -> tuple[int, str, str]:
        return a + b, request_id.get(), threading.current_thread().name

    total, seen, thread = await bulkhead.run(work, 1, b=2)
    assert (total, seen) == (3, "r-1")
    assert thread.startswith("ctx_") and thread != threading.current_thread().name
    assert bulkhead.busy == 0
    bulkhead.shutdown()


async def test_exceptions_pass_through_and_a_calls_own_timeout_is_not_the_bulkheads() -> None:
    bulkhead = Bulkhead("errors", 1, GUARD_SECONDS)

    def fails(exc: Exception) -> None:
        raise exc

    with pytest.raises(ValueError, match="bad"):
        await bulkhead.run(fails, ValueError("bad"))
    # socket.timeout is TimeoutError: the call's own, which must not read as "no answer".
    with pytest.raises(TimeoutError) as caught:
        await bulkhead.run(fails, TimeoutError("socket read timed out"))
    assert not isinstance(caught.value, BulkheadTimeout)
    assert bulkhead.busy == 0
    bulkhead.shutdown()


async def test_stuck_calls_hold_their_threads_and_further_calls_time_out_without_running(
    gate: threading.Event,
) -> None:
    bulkhead = Bulkhead("stuck", 2, 0.3)
    started: list[int] = []

    def hang(n: int) -> int:
        started.append(n)
        gate.wait(GUARD_SECONDS)
        return n

    stuck = [asyncio.create_task(bulkhead.run(hang, n)) for n in (1, 2)]
    await asyncio.sleep(0)  # both tasks take a thread in their first step
    assert bulkhead.busy == 2
    # A call meanwhile waits for a thread, and gives up.
    with pytest.raises(BulkheadTimeout):
        await bulkhead.run(hang, 3)
    for task in stuck:
        with pytest.raises(BulkheadTimeout, match=r"stuck: no answer within 0\.3 s"):
            await task
    assert bulkhead.busy == 2  # given up on, still running: their threads stay taken
    assert bulkhead.stuck
    # Every thread is held by a call past its deadline: the next ones fail at once.
    with pytest.raises(BulkheadTimeout, match="all 2 threads are stuck"):
        await bulkhead.run(hang, 4)
    assert sorted(started) == [1, 2]  # the others never reached a thread
    assert len(threads_named("stuck")) == 2

    gate.set()
    await eventually_idle(bulkhead)
    assert not bulkhead.stuck
    assert await bulkhead.run(lambda: "free again") == "free again"
    assert len(threads_named("stuck")) == 2  # the threads are reused
    bulkhead.shutdown()


async def test_a_caller_that_goes_away_keeps_the_permit_until_the_thread_returns(
    gate: threading.Event,
) -> None:
    bulkhead = Bulkhead("cancel", 1, 0.3)
    running = threading.Event()

    def hang() -> str:
        running.set()
        gate.wait(GUARD_SECONDS)
        return "done"

    task = asyncio.create_task(bulkhead.run(hang))
    assert await asyncio.to_thread(running.wait, GUARD_SECONDS)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert bulkhead.busy == 1
    with pytest.raises(BulkheadTimeout):
        await bulkhead.run(lambda: "never")
    gate.set()
    await eventually_idle(bulkhead)
    assert await bulkhead.run(lambda: "next") == "next"
    bulkhead.shutdown()


async def test_many_calls_never_run_on_more_threads_than_the_bulkhead_has() -> None:
    bulkhead = Bulkhead("bound", 3, GUARD_SECONDS)
    lock = threading.Lock()
    now = peak = 0

    def work(n: int) -> int:
        nonlocal now, peak
        with lock:
            now += 1
            peak = max(peak, now)
        threading.Event().wait(0.01)
        with lock:
            now -= 1
        return n

    results = await asyncio.gather(*(bulkhead.run(work, n) for n in range(40)))
    assert results == list(range(40))
    assert 1 <= peak <= 3
    assert len(threads_named("bound")) <= 3
    bulkhead.shutdown()


async def test_a_shut_down_bulkhead_refuses_calls_and_returns_the_permit() -> None:
    bulkhead = Bulkhead("closed", 1, GUARD_SECONDS)
    bulkhead.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        await bulkhead.run(lambda: None)
    assert bulkhead.busy == 0


def test_a_thread_stuck_for_good_does_not_keep_the_process_from_exiting() -> None:
    """A dependency that never answers (a frozen Postgres) must not hang a stopping service."""
    script = textwrap.dedent(
        """
        import asyncio, threading
        from services.common.bulkhead import Bulkhead, BulkheadTimeout

        async def main() -> None:
            bulkhead = Bulkhead("forever", 1, 0.2)
            try:
                await bulkhead.run(threading.Event().wait)
            except BulkheadTimeout:
                print("gave up", flush=True)

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=GUARD_SECONDS
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "gave up"


def test_settings_that_make_no_sense_are_refused() -> None:
    with pytest.raises(ValueError, match="threads"):
        Bulkhead("none", 0, 1.0)
    with pytest.raises(ValueError, match="timeout"):
        Bulkhead("never", 1, 0.0)


# --- the S3 readiness probe: a one-thread bulkhead of its own ---------------------------------


class FakeStorage:
    """A local HTTP endpoint that answers every request with `status`, or (status None) accepts
    connections and never answers, like a frozen S3."""

    def __init__(self, status: int | None) -> None:
        self.status = status
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._open: list[socket.socket] = []
        self.connected = threading.Event()
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self._open.append(conn)
            self.connected.set()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with suppress(OSError):
            while conn.recv(65536):
                if self.status is not None:
                    reason = "Forbidden" if self.status == 403 else "Unavailable"
                    conn.sendall(
                        f"HTTP/1.1 {self.status} {reason}\r\nContent-Length: 0\r\n\r\n".encode()
                    )

    @property
    def connections(self) -> int:
        return len(self._open)

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        for conn in self._open:
            with suppress(OSError):
                conn.close()


@pytest.fixture
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")


def probe_of(storage: FakeStorage, timeout_seconds: float) -> BucketProbe:
    url = f"http://127.0.0.1:{storage.port}"
    settings = S3Settings(
        endpoint_url=url,
        public_endpoint_url=url,
        bucket="media",
        region="us-east-1",
        create_bucket=False,
    )
    return BucketProbe(settings, timeout_seconds)


@pytest.mark.usefixtures("s3_credentials")
async def test_storage_that_answers_is_ready_even_when_it_refuses_the_head_bucket() -> None:
    """job_service's credentials need not allow HeadBucket (s3:ListBucket): a 403 is an answer.
    A 5xx is storage failing."""
    for status, ready in ((403, True), (503, False)):
        storage = FakeStorage(status)
        probe = probe_of(storage, 5.0)
        try:
            assert await probe() is ready, status
        finally:
            probe.close()
            storage.close()


@pytest.mark.usefixtures("s3_credentials")
async def test_storage_that_never_answers_is_unready_and_holds_one_thread_at_most() -> None:
    storage = FakeStorage(None)
    probe = probe_of(storage, 2.0)
    try:
        first = asyncio.create_task(probe())
        # The first HeadBucket has connected and waits for an answer that never comes.
        assert await asyncio.to_thread(storage.connected.wait, GUARD_SECONDS)
        assert await probe() is False  # still stuck: fails at once, starts nothing
        assert await asyncio.wait_for(first, GUARD_SECONDS) is False
        assert storage.connections == 1  # one request went out, not retried
    finally:
        probe.close()
        storage.close()
