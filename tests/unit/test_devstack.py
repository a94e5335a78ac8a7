"""The local-stack launcher, with stand-in services (tiny gRPC health servers) instead of the real
ones, so these run in a second or two."""

from __future__ import annotations

import os
import socket
import sys
import textwrap
from pathlib import Path

import pytest

from devstack import demo
from devstack.demo import find_job_id
from devstack.procs import StartupError, free_port
from devstack.services import ServiceProcess, health_serving
from devstack.state import RunDir, format_env, parse_env

FAKE_SERVICE = textwrap.dedent(
    """
    import asyncio, os, sys

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    async def main() -> None:
        if os.environ.get("FAKE_FAIL"):
            print("fake service refuses to start", file=sys.stderr)
            raise SystemExit(3)
        server = grpc.aio.server()
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        server.add_insecure_port(os.environ["LISTEN_ADDR"])
        await server.start()
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        await server.wait_for_termination()

    asyncio.run(main())
    """
)


@pytest.fixture
def fake_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "fake_service.py").write_text(FAKE_SERVICE)
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


def _fake(tmp_path: Path, env: dict[str, str]) -> ServiceProcess:
    return ServiceProcess(name="fake", module="fake_service", env=env, log_dir=tmp_path / "logs")


def test_service_starts_healthy_restarts_on_same_address_and_stops(
    tmp_path: Path, fake_env: dict[str, str]
) -> None:
    service = _fake(tmp_path, fake_env)
    service.start(timeout=30)
    try:
        addr = service.addr
        assert health_serving(addr)
        service.kill()
        assert not service.running
        service.restart(timeout=30)
        assert service.addr == addr
        assert health_serving(addr)
    finally:
        service.stop(5)
    assert not service.running
    assert (tmp_path / "logs" / "fake.log").exists()


def test_service_that_exits_early_reports_its_log(tmp_path: Path, fake_env: dict[str, str]) -> None:
    service = _fake(tmp_path, {**fake_env, "FAKE_FAIL": "1"})
    with pytest.raises(StartupError, match="refuses to start"):
        service.start(timeout=30)
    assert not service.running


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_env_file_round_trips_and_is_private(tmp_path: Path) -> None:
    values = {
        "JOB_SERVICE_ADDR": "127.0.0.1:23456",
        "MEDIA_TOKEN": "eyJ.abc-_.xyz",
        "DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:1/media",
        "ODD": "a b'c",
    }
    assert parse_env(format_env(values)) == values
    run = RunDir(tmp_path)
    run.write_env(values)
    assert run.read_env() == values
    assert run.env_file.stat().st_mode & 0o777 == 0o600
    assert run.env_file.read_text().count("export ") == len(values)


def test_run_dir_lock_is_exclusive(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    first = run.try_lock()
    assert first is not None
    try:
        assert run.try_lock() is None
    finally:
        os.close(first)
    second = run.try_lock()
    assert second is not None
    os.close(second)


def test_find_job_id_prefers_uuid7() -> None:
    request_id = "3f2b8c1e-9d4a-4b6e-8f00-1234567890ab"
    job_id = "01932c07-8a9f-7cc4-9a1d-0123456789ab"
    assert find_job_id(f"request {request_id}\njob {job_id} QUEUED") == job_id
    assert find_job_id(f"request {request_id}") == request_id
    assert find_job_id("nothing here") is None


FAKE_MEDIACTL = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    args = sys.argv[1:]
    kind, out = args[1], Path(args[args.index("-o") + 1])
    job_id = {"image": "01932c07-8a9f-7cc4-9a1d-00000000000a",
              "video": "01932c07-8a9f-7cc4-9a1d-00000000000b"}[kind]
    ext = {"image": "png", "video": "mp4"}[kind]
    print(f"created job {job_id}  ({kind}, QUEUED)")
    print("SUCCEEDED 100%  attempt 1  done")
    print(f"job:       {job_id}")
    print(f"      saved    {out / f'{job_id}-0.{ext}'}")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{job_id}-0.{ext}").write_bytes(b"media")
    """
)


def test_demo_shows_each_job_once_and_lists_the_saved_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "fake_mediactl.py"
    script.write_text(FAKE_MEDIACTL)
    calls: list[tuple[str, ...]] = []

    def fake_mediactl(*args: str) -> list[str]:
        calls.append(args)
        return [sys.executable, str(script), *args]

    monkeypatch.setattr(demo, "mediactl", fake_mediactl)
    monkeypatch.chdir(tmp_path)
    outputs = tmp_path / ".run" / "outputs"
    assert demo.run_demo({}, outputs) == 0
    out = capfd.readouterr().out
    # One mediactl run per job (create --watch, saving into the run directory); no `get` after.
    assert [call[:2] for call in calls] == [("create", "image"), ("create", "video")]
    assert all(call[-2:] == ("-o", ".run/outputs") and "--watch" in call for call in calls)
    image, video = "01932c07-8a9f-7cc4-9a1d-00000000000a", "01932c07-8a9f-7cc4-9a1d-00000000000b"
    assert out.count(f"job:       {image}") == 1
    assert out.splitlines()[-4:] == [
        f"image job {image}: succeeded",
        f"  .run/outputs/{image}-0.png",
        f"video job {video}: succeeded",
        f"  .run/outputs/{video}-0.mp4",
    ]
