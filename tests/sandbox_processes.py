"""Starting sandbox processes for tests, whatever the CRM: spawn `python -m sandboxes.cli <crm> --port 0 ...`,
wait for its banner line (`<Name> sandbox: https://127.0.0.1:PORT  (CA: path)`), stop it at teardown.

The banner is printed once the socket is bound (sandboxes/serving.py), so by the time `spawn` returns the port
accepts connections. Output goes to a log file next to the state directory; a restart appends to the same log and
the banner is searched only in what was appended.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


@dataclass
class SandboxProcess:
    """A sandbox started by a test: where it listens, which CA signs it, how to reach its admin API."""
    base_url: str  # https://127.0.0.1:PORT
    ca_path: Path
    credentials: Any  # the sandbox's own Credentials type
    admin_token: str
    state_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        stop(self.process)


def spawn(arguments: list[str], log_path: Path, banner: re.Pattern[str], timeout: float = 120) \
        -> tuple[subprocess.Popen[bytes], re.Match[str]]:
    """Start `python -m sandboxes.cli <arguments>` and return the process and its banner match."""
    offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "sandboxes.cli", *arguments], cwd=REPO, stdout=log,
                                   stderr=subprocess.STDOUT, env=dict(os.environ))
    deadline = time.monotonic() + timeout
    while True:
        match = banner.search(log_path.read_bytes()[offset:].decode(errors="replace"))
        if match:
            return process, match
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise RuntimeError(f"the sandbox did not start within {timeout:.0f} s:\n{log_path.read_text()}")
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate (then kill, if it lingers) one process we started."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


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
