"""Start a sandbox as a child process on a free port and return once it answers: what every connector's SandboxKit
does (crmsync.connectors.SandboxKit), in one place.

The child is `crmsync sandbox <crm> --port 0 --state <dir> ...`, started by crmsync.process.spawn: it dies with
this process and writes its output to a 0600 log file. It prints its banner `<Name> sandbox:
https://127.0.0.1:PORT  (CA: path)` once the socket is bound; the banner is read from that log (output is appended,
so a restart reads only what follows). Stop the child with crmsync.process.stop.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

BANNER = re.compile(r"(\w[\w ]*) sandbox: (https://\S+)\s+\(CA: (.+?)\)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Launched:
    process: subprocess.Popen
    url: str  # https://127.0.0.1:PORT
    ca_file: Path


def launch(crm: str, state_dir: Path, *, seed_contacts: int = 0, log_file: Path | None = None,
           extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None, timeout: float = 180) -> Launched:
    """Run `crmsync sandbox <crm>` with its state under `state_dir`; raise with the log's tail if it fails."""
    from crmsync import process

    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = Path(log_file) if log_file else state_dir.with_suffix(".log")
    offset = log_path.stat().st_size if log_path.exists() else 0
    command = [sys.executable, "-m", "crmsync", "sandbox", crm, "--port", "0", "--state", str(state_dir),
               "--seed-contacts", str(seed_contacts), *extra_args]
    child = process.spawn(command, env=dict(env) if env is not None else None, log_file=log_path)
    deadline = time.monotonic() + timeout
    while True:
        with open(log_path, "rb") as log:
            log.seek(offset)
            match = BANNER.search(log.read().decode(errors="replace"))
        if match:
            return Launched(child, match.group(2), Path(match.group(3)))
        if child.poll() is not None:
            raise RuntimeError(f"the {crm} sandbox exited with status {child.returncode}; log {log_path}:\n"
                               f"{_tail(log_path)}")
        if time.monotonic() > deadline:
            process.stop(child)
            raise RuntimeError(f"the {crm} sandbox did not start within {timeout:.0f} s; log {log_path}:\n"
                               f"{_tail(log_path)}")
        time.sleep(0.05)


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
