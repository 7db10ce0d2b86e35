"""Start a sandbox as a subprocess, wait for its banner, stop it: shared by every sandbox's test fixtures.

A sandbox prints `<Name> sandbox: https://host:port  (CA: path)` once its socket is bound; `spawn`
(sandboxes/launch.py, also behind the connectors' sandbox kits) waits for that line in the process's log (output
appends to `log_path`, so a restart reads only what follows) and returns the match. `stop` (crmsync/process.py)
terminates, then kills after 15 s. `started_sandboxes` backs the `start_sandbox` fixtures: every sandbox a test
starts is stopped when the test ends.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, TypeVar

import requests

from crmsync.process import stop
from sandboxes.launch import spawn  # noqa: F401  (re-exported for the fixtures)

T = TypeVar("T")


class _Stoppable(Protocol):
    def stop(self) -> None: ...


def tracked(make: Callable[..., T], finish: Callable[[T], None]) -> Iterator[Callable[..., T]]:
    """Fixture body: yield a factory, then `finish` everything it made (servers stopped, clients closed)."""
    made: list[T] = []

    def create(*args: object, **kwargs: object) -> T:
        item = make(*args, **kwargs)
        made.append(item)
        return item

    yield create
    for item in made:
        finish(item)


def started_sandboxes(tmp_path: Path, launch: Callable[..., Any], default_name: str) \
        -> Iterator[Callable[..., Any]]:
    """Yield `start(name=default_name, **kwargs)` launching under tmp_path; stop them all afterwards."""
    started: list[_Stoppable] = []

    def start(name: str = default_name, **kwargs: Any) -> Any:
        running = launch(tmp_path / name, **kwargs)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


class SandboxHandle:
    """Methods every running-sandbox record shares; the record provides base_url, ca_path, admin_token, process."""

    base_url: str
    ca_path: Path
    admin_token: str
    process: subprocess.Popen[bytes]

    def session(self) -> requests.Session:
        session = requests.Session()
        session.verify = str(self.ca_path)
        session.trust_env = False  # else an exported REQUESTS_CA_BUNDLE silently replaces `verify`
        return session

    def admin(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call a /__sandbox/ endpoint (POST when a body is given) and return its JSON."""
        url, headers = f"{self.base_url}/__sandbox/{path}", {"X-Sandbox-Admin": self.admin_token}
        response = (self.session().post(url, json=body, headers=headers, timeout=30) if body is not None
                    else self.session().get(url, headers=headers, timeout=30))
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        stop(self.process)


@dataclass
class SandboxProcess(SandboxHandle):
    """A sandbox started by a test: where it listens, which CA signs it, how to reach its admin API."""

    base_url: str  # https://127.0.0.1:PORT
    ca_path: Path
    credentials: Any  # the sandbox's own Credentials type
    admin_token: str
    state_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
