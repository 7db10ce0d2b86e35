"""Start crmsync services as child processes (used by `crmsync run`, the demo and the tests).

Children get the resolved broker and database through the environment, so they connect to exactly the same
infrastructure as the parent without starting anything themselves.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from crmsync import private
from crmsync.infra import Endpoints


class StopRequested(KeyboardInterrupt):
    """SIGTERM or SIGHUP (systemd, `docker stop`, a closed terminal), handled like Ctrl-C."""


def interrupt_on_stop_signals() -> None:
    """Make SIGTERM and SIGHUP raise StopRequested in the main thread, so `finally:` blocks run (the default
    action would end the process on the spot and leave its children behind)."""
    def handler(signum: int, _frame: object) -> None:
        raise StopRequested(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, handler)


def service_env(found: Endpoints, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["KAFKA_BOOTSTRAP_SERVERS"] = found.bootstrap_servers
    env["CAMPAIGN_DSN"] = found.campaign_dsn
    env.update(extra or {})
    return env


def spawn_service(name: str, found: Endpoints, *, config_file: Path | None = None, log_file: Path | None = None,
                  extra_env: dict[str, str] | None = None, args: list[str] | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "crmsync"]
    if config_file:
        command += ["--config", str(config_file)]
    command += ["service", name, *(args or [])]
    output = private.open_log(log_file) if log_file else subprocess.DEVNULL
    return subprocess.Popen(command, env=service_env(found, extra_env), stdout=output, stderr=output,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def stop(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL if the service does not finish in time."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
