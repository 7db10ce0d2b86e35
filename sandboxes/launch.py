"""Start a CRM sandbox as a child process and wait until it answers: what a connector's `SandboxKit` does.

A sandbox prints `<Name> sandbox: https://127.0.0.1:PORT  (CA: path)` once its socket is bound (sandboxes/
serving.py), so `--port 0` works: the banner names the port. Output is appended to `log_file`; only the lines
after the start are searched, so a restart with the same log is read correctly. A sandbox that exits or does
not answer within `timeout` is stopped and reported with its log.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from crmsync.process import stop

BANNER = re.compile(r"sandbox: (https://\S+)\s+\(CA: (.+)\)")
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Launched:
    process: subprocess.Popen
    url: str
    ca_file: Path


def launch(crm: str, state_dir: Path, args: Sequence[str] = (), *, log_file: Path | None = None,
           timeout: float = 120.0) -> Launched:
    """`crmsync sandbox <crm> --port 0 --state <state_dir> <args>`, returned once its banner is printed."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = Path(log_file) if log_file else state_dir.with_suffix(".log")
    offset = log_path.stat().st_size if log_path.exists() else 0
    command = [sys.executable, "-m", "sandboxes.cli", crm, "--port", "0", "--state", str(state_dir), *args]
    with open(log_path, "ab") as output:
        process = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while True:
        found = BANNER.search(log_path.read_bytes()[offset:].decode(errors="replace"))
        if found:
            return Launched(process, found.group(1), Path(found.group(2).strip()))
        if process.poll() is not None:
            raise RuntimeError(f"the {crm} sandbox exited with {process.returncode}; its log ({log_path}):\n"
                               f"{log_path.read_text(errors='replace')[-4000:]}")
        if time.monotonic() > deadline:
            stop(process)
            raise RuntimeError(f"the {crm} sandbox did not answer within {timeout:.0f} s; see {log_path}")
        time.sleep(0.05)
