"""Run the Salesforce sandbox: certificates, storage, optional seeding, then uvicorn over HTTPS only.

State lives in `state_dir` (SQLite database, settings.json, server certificate) and survives restarts. The CA
that signs the server certificate lives one level up (`state_dir.parent/ca.pem`, i.e.
`.crmsync/sandboxes/ca.pem` by default) so every crmsync sandbox is trusted through one file.

The listening socket is bound before the banner is printed, so `--port 0` works: the banner names the port the
OS picked, and by the time it is printed connections are already queued rather than refused.
"""
from __future__ import annotations

import logging
import socket
import sys
import time
from pathlib import Path
from typing import Sequence

import uvicorn

from crmsync.tls import ensure_ca, issue_server_cert

from .app import build_app, create_sandbox
from .settings import DEFAULT_ADMIN_TOKEN, DEFAULT_CREDENTIALS, Credentials

DEFAULT_STATE_DIR = Path(".crmsync/sandboxes/salesforce")
BANNER = "Salesforce sandbox: "


def serve(host: str = "127.0.0.1", port: int = 8443, state_dir: Path = DEFAULT_STATE_DIR, seed_contacts: int = 0,
          tls_names: Sequence[str] = (), credentials: Credentials = DEFAULT_CREDENTIALS,
          admin_token: str = DEFAULT_ADMIN_TOKEN, log_level: str = "info") -> None:
    """Serve until interrupted. Seeding happens only into an empty store, so re-running is harmless."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    ca_path = ensure_ca(state_dir.parent)
    wildcard = host in ("", "0.0.0.0", "::")
    cert, key = issue_server_cert(state_dir.parent, [*tls_names, *([] if wildcard else [host])], out_dir=state_dir)
    sandbox = create_sandbox(state_dir, credentials, admin_token)
    if seed_contacts:
        started = time.monotonic()
        added = sandbox.store.seed_contacts(seed_contacts, user_id=sandbox.api_user_id)
        note = f"seeded {added} contacts in {time.monotonic() - started:.1f} s" if added else \
            "seeding skipped: the store already holds contacts"
        print(note, flush=True)
    sock = _listen(host, port)
    shown = "127.0.0.1" if wildcard else host
    print(f"{BANNER}https://{_bracket(shown)}:{sock.getsockname()[1]}  (CA: {ca_path.resolve()})", flush=True)
    logging.getLogger("crmsync.sandbox.salesforce").info("API user: %s", credentials.username)
    config = uvicorn.Config(build_app(sandbox), ssl_certfile=str(cert), ssl_keyfile=str(key), lifespan="off",
                            access_log=False, log_level="warning", timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sandbox.store.close()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host or "0.0.0.0", port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
