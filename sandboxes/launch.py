"""Start a CRM sandbox as a child process and wait until it answers: what a connector's `SandboxKit` does, and
what the tests' sandbox fixtures do (tests/sandbox_process.py).

A sandbox prints `<Name> sandbox: https://127.0.0.1:PORT  (CA: path)` once its socket is bound (sandboxes/
serving.py), so `--port 0` works: the banner names the port. Output is appended to a log file; only the lines
after the start are searched, so a restart with the same log is read correctly. A sandbox that exits or does
not answer within `timeout` is stopped and reported with its log.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from crmsync.process import PARENT_ENV, stop

BANNER = re.compile(r"sandbox: (https://\S+)\s+\(CA: (.+)\)")
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Launched:
    process: subprocess.Popen
    url: str
    ca_file: Path


def seeded_timeout(seed_contacts: int) -> float:
    """How long a sandbox may take to start: it seeds its records first (a million contacts took ~2 minutes
    here, past the 120 s that any start is given)."""
    return 120.0 + seed_contacts / 5_000


def launch(crm: str, state_dir: Path, args: Sequence[str] = (), *, log_file: Path | None = None,
           timeout: float = 120.0) -> Launched:
    """`crmsync sandbox <crm> --port 0 --state <state_dir> <args>`, returned once its banner is printed; output in
    `log_file` (default `<state_dir>.log`)."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "crmsync", "sandbox", crm, "--port", "0", "--state", str(state_dir), *args]
    process, found = spawn(command, cwd=REPO, log_path=Path(log_file) if log_file else state_dir.with_suffix(".log"),
                           banner=BANNER, timeout=timeout)
    return Launched(process, found.group(1), Path(found.group(2).strip()))


def spawn(command: Sequence[str], *, cwd: Path, log_path: Path, banner: re.Pattern[str],
          env: Mapping[str, str] | None = None, timeout: float = 120) -> tuple[subprocess.Popen, re.Match[str]]:
    """Run `command` with its output appended to `log_path` and return once `banner` appears in what it wrote."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    offset = log_path.stat().st_size if log_path.exists() else 0
    environment = {**(env if env is not None else os.environ), PARENT_ENV: str(os.getpid())}  # dies with us
    with open(log_path, "ab") as log:
        process = subprocess.Popen(list(command), cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=environment, start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        match = banner.search(log_path.read_bytes()[offset:].decode(errors="replace"))
        if match:
            return process, match
        if process.poll() is not None:
            raise RuntimeError(f"sandbox exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            stop(process)
            raise RuntimeError(f"sandbox did not start within {timeout} s:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.05)


def answers(url: str, ca_file: Path, timeout: float = 2.0) -> bool:
    """Something answers HTTPS at `url`, with a certificate the local CA signed (any status counts)."""
    import ssl

    import httpx

    try:
        httpx.get(url, verify=ssl.create_default_context(cafile=str(ca_file)), timeout=timeout)
    except (httpx.HTTPError, ssl.SSLError, OSError):
        return False
    return True
