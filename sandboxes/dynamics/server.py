"""Run the Dynamics sandbox: certificates, storage, optional seeding, then HTTPS (sandboxes/serving.py)."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

from sandboxes.serving import prepare_tls, serve_https, setup_logging

from .app import build_app, create_sandbox
from .seed import seed_contacts
from .settings import DEFAULT_ADMIN_TOKEN, DEFAULT_CREDENTIALS, Credentials

DEFAULT_STATE_DIR = Path(".crmsync/sandboxes/dynamics")
BANNER = "Dynamics sandbox: "


def serve(host: str = "127.0.0.1", port: int = 9443, state_dir: Path = DEFAULT_STATE_DIR, seed: int = 0,
          tls_names: Sequence[str] = (), credentials: Credentials = DEFAULT_CREDENTIALS,
          admin_token: str = DEFAULT_ADMIN_TOKEN, log_level: str = "info") -> None:
    """Serve until interrupted. Seeding happens only into an empty store, so re-running is harmless."""
    setup_logging(log_level)
    tls = prepare_tls(Path(state_dir), host, tls_names)
    sandbox = create_sandbox(Path(state_dir), credentials, admin_token, tuple(tls_names))
    if seed:
        started = time.monotonic()
        added = seed_contacts(sandbox.store, seed, user_id=sandbox.ids["user_id"])
        note = f"seeded {added} contacts and {max(1, added // 5)} accounts in {time.monotonic() - started:.1f} s" \
            if added else "seeding skipped: the store already holds contacts"
        print(note, flush=True)
    log = logging.getLogger("crmsync.sandbox.dynamics")
    log.info("tenant %s, app %s, user %s, environment %s", credentials.tenant_id, credentials.client_id,
             credentials.username, sandbox.settings.org_url)
    serve_https(build_app(sandbox), host=host, port=port, tls=tls, banner=BANNER, on_close=sandbox.store.close)
